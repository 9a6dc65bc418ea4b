"""The generic path: P and Qw as CSR (sparse) or dense operators, feature-major.

The generic path works in "feature-major" layout, (features, N) instead of
(N, features): a CSR sparse matrix times a contiguous dense matrix is the one
sparse product that is fast on CPU (and cuSPARSE's native case on GPU).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ..._autocast import own_precision
from .common import Nonlinearity, _sigma_backward

if TYPE_CHECKING:
    from ..functional import StructuredIAT

def _as_operator(A: torch.Tensor, max_density: float) -> torch.Tensor:
    """``A`` as a CSR tensor if at most ``max_density`` of it is non-zero, else dense.

    Half-precision matrices on the CPU stay dense: its CSR kernels have no bf16/fp16.
    """
    density = float((A != 0).sum()) / max(A.numel(), 1)
    half_on_cpu = A.dtype in (torch.float16, torch.bfloat16) and A.device.type == "cpu"
    if density <= max_density and not half_on_cpu:
        with warnings.catch_warnings():
            # PyTorch flags sparse CSR as beta; the products used here are stable.
            warnings.simplefilter("ignore", UserWarning)
            return A.to_sparse_csr()
    return A.contiguous()



def _forward_t(ops: StructuredIAT, zt: torch.Tensor, sigma: Nonlinearity) -> torch.Tensor:
    """Feature-major forward of the generic path: (d, N) -> (m, N)."""
    return ops.qt @ sigma(ops.p @ zt)


class _IATRecompute(torch.autograd.Function):
    """Generic path: IAT whose backward recomputes the state function from the saved input."""

    @staticmethod
    @own_precision
    def forward(ctx, zt, ops, sigma_name, sigma):  # type: ignore[override]
        ctx.save_for_backward(zt)
        ctx.ops = ops
        ctx.sigma_name = sigma_name
        ctx.sigma = sigma
        return _forward_t(ops, zt, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @own_precision
    def backward(ctx, grad_yt):  # type: ignore[override]
        (zt,) = ctx.saved_tensors
        ops: StructuredIAT = ctx.ops
        ft = ops.p @ zt  # recomputed: never stored between forward and backward
        grad_rt = ops.q @ grad_yt.contiguous()
        grad_ft = _sigma_backward(ctx.sigma_name, ctx.sigma, ft, grad_rt)
        return ops.pt @ grad_ft, None, None, None
