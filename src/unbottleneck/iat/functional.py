"""The discretised IAT, ``y = Q^T diag(w) sigma(P z)``, as functions.

Two implementations of the same map:

* :func:`iat_reference` -- dense matrices, plain autograd.  Obviously correct,
  stores the (..., M) intermediates for backward, supports double backward and
  trainable bases.  It is the oracle of the tests.
* :func:`iat_fast` -- a custom autograd function that (a) applies ``P``, ``P^T``,
  ``Q^T diag(w)`` and its transpose as CSR sparse products when the matrix is
  sparse (local bases: each quadrature node sees at most a couple of basis
  functions) and as dense matmuls otherwise, and (b) keeps only the input ``z``
  for backward and recomputes the M-wide state ``P z``, so a training step
  stores O(B d) instead of O(B M) floats per layer.

``Qw`` below always means ``diag(w) Q`` (M, m): the quadrature weights are
folded into the output basis once, at construction.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Nonlinearity = Callable[[torch.Tensor], torch.Tensor]

NONLINEARITIES: dict[str, Nonlinearity] = {
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "tanh": torch.tanh,
    "elu": F.elu,
}


def resolve_nonlinearity(nonlinearity: str | Nonlinearity) -> tuple[str, Nonlinearity]:
    """Name and function of an element-wise nonlinearity (callables allowed)."""
    if callable(nonlinearity):
        # The name selects hand-written derivatives (fast path) and analytic formulas
        # (analysis), so only the registered functions themselves may carry a
        # registered name; a user function merely *called* "relu" must not.
        for key, fn in NONLINEARITIES.items():
            if nonlinearity is fn:
                return key, fn
        if nonlinearity is F.relu:
            return "relu", nonlinearity
        name = getattr(nonlinearity, "__name__", "custom")
        if name.lower() in NONLINEARITIES:
            name = f"custom_{name}"
        return name, nonlinearity
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity must be a name or callable, got {type(nonlinearity).__name__}")
    key = nonlinearity.lower()
    if key not in NONLINEARITIES:
        raise ValueError(
            f"unknown nonlinearity {nonlinearity!r}; choose one of {', '.join(NONLINEARITIES)} "
            "or pass a callable"
        )
    return key, NONLINEARITIES[key]


def iat_reference(
    z: torch.Tensor, P: torch.Tensor, Qw: torch.Tensor, sigma: Nonlinearity = torch.relu
) -> torch.Tensor:
    """Dense discretised IAT.

    Args:
        z: (..., d) input.
        P: (M, d) input basis at the nodes, ``P[k, i] = p_i(s_k)``.
        Qw: (M, m) output basis times weights, ``Qw[k, j] = w_k q_j(s_k)``.
        sigma: element-wise nonlinearity applied to the state function.

    Returns:
        (..., m)
    """
    f = z @ P.t()  # state function at the nodes, (..., M)
    return sigma(f) @ Qw


# --------------------------------------------------------------------------------------
# Structured linear operators
# --------------------------------------------------------------------------------------
# The fast path works in "feature-major" layout, (features, N) instead of
# (N, features): a CSR sparse matrix times a contiguous dense matrix is the one
# sparse product that is fast on CPU (and cuSPARSE's native case on GPU).


def _as_operator(A: torch.Tensor, max_density: float) -> torch.Tensor:
    """``A`` as a CSR tensor if at most ``max_density`` of it is non-zero, else dense."""
    density = float((A != 0).sum()) / max(A.numel(), 1)
    if density <= max_density:
        with warnings.catch_warnings():
            # PyTorch flags sparse CSR as beta; the products used here are stable.
            warnings.simplefilter("ignore", UserWarning)
            return A.to_sparse_csr()
    return A.contiguous()


@dataclass
class StructuredIAT:
    """The four linear maps of one IAT, each a dense or CSR (rows, cols) matrix.

    ``p`` = P (M, d), ``pt`` = P^T (d, M), ``qt`` = Qw^T (m, M), ``q`` = Qw (M, m);
    each is applied to feature-major inputs: ``ft = p @ zt`` etc.
    """

    P: torch.Tensor
    Qw: torch.Tensor
    p: torch.Tensor
    pt: torch.Tensor
    qt: torch.Tensor
    q: torch.Tensor

    @property
    def sparse(self) -> tuple[bool, bool]:
        """Whether P and Qw are applied as sparse matrices."""
        return (self.p.layout == torch.sparse_csr, self.qt.layout == torch.sparse_csr)


def build_structure(P: torch.Tensor, Qw: torch.Tensor, max_density: float = 0.1) -> StructuredIAT:
    """Detect sparsity in ``P`` and ``Qw`` (local bases) and build the operators.

    Sparse storage is used for a matrix whose share of non-zeros is at most
    ``max_density``; below that a CSR product beats a dense BLAS call on CPU.
    """
    P = P.detach()
    Qw = Qw.detach()
    return StructuredIAT(
        P=P,
        Qw=Qw,
        p=_as_operator(P, max_density),
        pt=_as_operator(P.t(), max_density),
        qt=_as_operator(Qw.t(), max_density),
        q=_as_operator(Qw, max_density),
    )


def _forward_t(ops: StructuredIAT, zt: torch.Tensor, sigma: Nonlinearity) -> torch.Tensor:
    """Feature-major forward: (d, N) -> (m, N)."""
    return ops.qt @ sigma(ops.p @ zt)


class _IATRecompute(torch.autograd.Function):
    """IAT whose backward recomputes the state function from the saved input."""

    @staticmethod
    def forward(ctx, zt, ops, sigma_name, sigma):  # type: ignore[override]
        ctx.save_for_backward(zt)
        ctx.ops = ops
        ctx.sigma_name = sigma_name
        ctx.sigma = sigma
        return _forward_t(ops, zt, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_yt):  # type: ignore[override]
        (zt,) = ctx.saved_tensors
        ops: StructuredIAT = ctx.ops
        ft = ops.p @ zt  # recomputed: never stored between forward and backward
        grad_rt = ops.q @ grad_yt.contiguous()
        if ctx.sigma_name == "relu":
            grad_ft = grad_rt.masked_fill_(ft <= 0, 0.0)
        elif ctx.sigma_name == "leaky_relu":
            grad_ft = torch.where(ft > 0, grad_rt, grad_rt * 0.01)
        else:
            with torch.enable_grad():
                ft = ft.detach().requires_grad_(True)
                (grad_ft,) = torch.autograd.grad(ctx.sigma(ft), ft, grad_rt)
        return ops.pt @ grad_ft, None, None, None


def iat_fast(
    z: torch.Tensor, ops: StructuredIAT, sigma_name: str = "relu", sigma: Nonlinearity = torch.relu
) -> torch.Tensor:
    """Structured, memory-saving discretised IAT; same values as :func:`iat_reference`.

    Args:
        z: (..., d) input.
        ops: operators from :func:`build_structure` (bases are constants here).

    Returns:
        (..., m)
    """
    lead = z.shape[:-1]
    zt = z.reshape(-1, z.shape[-1]).t().contiguous()  # (d, N)
    if torch.is_grad_enabled() and z.requires_grad:
        yt = _IATRecompute.apply(zt, ops, sigma_name, sigma)
    else:
        yt = _forward_t(ops, zt, sigma)
    # A transposed view: the next Linear's matmul reads it without a copy.
    return yt.t().reshape(*lead, yt.shape[0])
