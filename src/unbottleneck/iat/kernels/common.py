"""Helpers shared by the IAT kernels: the nonlinearity type, tolerances, sigma and its
derivative on recomputed states, chunking."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ... import settings

Nonlinearity = Callable[[torch.Tensor], torch.Tensor]
# sigma(c x) = c sigma(x) for c > 0: the select kernel may pull positive values of P out.
_HOMOGENEOUS = ("relu", "leaky_relu")



def _tol(dtype: torch.dtype) -> float:
    """Relative tolerance of the structure detection for matrices stored in ``dtype``."""
    return 256 * torch.finfo(dtype).eps


def _sigma_backward(
    sigma_name: str, sigma: Nonlinearity, f: torch.Tensor, grad_r: torch.Tensor
) -> torch.Tensor:
    """``sigma'(f) * grad_r`` for a recomputed state ``f``; ReLU and leaky ReLU write it
    into ``grad_r`` (a scratch buffer at every caller) and return it."""
    if sigma_name == "relu":
        # The fused ATen kernel: a bool mask (f > 0) and a masked product are each
        # several times slower on CPU.
        return torch.ops.aten.threshold_backward.grad_input(grad_r, f, 0.0, grad_input=grad_r)
    if sigma_name == "leaky_relu":
        return torch.ops.aten.leaky_relu_backward.grad_input(grad_r, f, 0.01, False,
                                                             grad_input=grad_r)
    with torch.enable_grad():
        f = f.detach().requires_grad_(True)
        (grad_f,) = torch.autograd.grad(sigma(f), f, grad_r)
    return grad_f


def _apply_sigma(sigma_name: str, sigma: Nonlinearity, f: torch.Tensor) -> torch.Tensor:
    """``sigma(f)``, in place for ReLU (``f`` is a scratch buffer here)."""
    return f.relu_() if sigma_name == "relu" else sigma(f)


def _chunk(total: int, per_item: int, budget: int | None = None, device_type: str = "cpu") -> int:
    """How many of ``total`` items (``per_item`` elements each) one chunk of ``budget``
    elements (default ``settings.iat_chunk_elements``) takes.  Off the CPU the budget is
    ``settings.iat_accelerator_chunk_elements`` whatever is asked: chunks sized for a CPU
    cache would only multiply kernel launches there."""
    knobs = settings.get()
    if device_type != "cpu":
        budget = knobs.iat_accelerator_chunk_elements
    elif budget is None:
        budget = knobs.iat_chunk_elements
    return max(1, min(total, budget // max(per_item, 1)))
