"""Kernel ``select``: one basis function per node (rectangular bases), an element-wise map."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import _HOMOGENEOUS, Nonlinearity


@dataclass
class _SelectKernel:
    """``y = sigma(z) * gain`` (or ``sigma(z) @ mix``) where ``gain = diag(P^T Qw)``."""

    unit: bool  # every non-zero of P is 1: exact for any sigma, else only positively homogeneous
    gain: torch.Tensor | None = None  # (d,)
    mix: torch.Tensor | None = None  # (d, m)
    name: str = "select"

    def to(self, **kw) -> _SelectKernel:
        return _SelectKernel(
            self.unit,
            None if self.gain is None else self.gain.to(**kw),
            None if self.mix is None else self.mix.to(**kw),
        )

    def supports(self, sigma_name: str) -> bool:
        return self.unit or sigma_name in _HOMOGENEOUS


def _select_kernel(P: torch.Tensor, Qw: torch.Tensor, tol: float) -> _SelectKernel | None:
    nz = P != 0
    if not bool((nz.sum(1) == 1).all()):
        return None
    col = nz.to(torch.int64).argmax(1)
    val = P[torch.arange(P.shape[0]), col]
    if not bool((val > 0).all()):
        return None
    unit = bool((val == 1).all())
    # G = P^T Qw, summed over the single non-zero of each row: O(M m), no dense product.
    G = torch.zeros(P.shape[1], Qw.shape[1], dtype=P.dtype).index_add_(0, col, val[:, None] * Qw)
    if G.shape[0] == G.shape[1]:
        diag = torch.diagonal(G).clone()
        off = G - torch.diag(diag)
        if float(off.abs().max()) <= tol * float(G.abs().max()):
            return _SelectKernel(unit, gain=diag)
    return _SelectKernel(unit, mix=G)


def _select_forward(z: torch.Tensor, kern: _SelectKernel, sigma: Nonlinearity) -> torch.Tensor:
    r = sigma(z)  # plain autograd: ReLU keeps its (..., d) output, like nn.ReLU
    return r * kern.gain if kern.gain is not None else r @ kern.mix


def select_expression(z: torch.Tensor, kern: _SelectKernel, sigma: Nonlinearity,
                      basis: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`_select_forward` with the signature of every fused expression: (N, d) -> (N, m)."""
    return _select_forward(z, kern, sigma)


def select_expression_backward(z: torch.Tensor, gy: torch.Tensor, kern: _SelectKernel,
                               negative_slope: float, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of :func:`select_expression` w.r.t. ``z`` for ReLU / leaky ReLU: (N, d)."""
    g = gy * kern.gain if kern.gain is not None else gy @ kern.mix.t()
    return torch.where(z > 0, g, negative_slope * g)
