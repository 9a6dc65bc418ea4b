"""Kernel ``band`` as one element-wise expression that a compiler fuses (the hats' IAT).

The eager band kernel (:mod:`.band`) loops over the R node slots of an interval and
runs a handful of ATen ops per slot.  Here the same map is written once, over all
slots at the same time, in plain tensor ops:

    f[n, r, v] = A0[r, v] z[n, rows[v]] + A1[r, v] z[n, rows[v] + 1]      (the states)
    y[:, rows]     += sum_r Qat0[r, v] sigma(f[:, r, v])                   (left ends)
    y[:, rows + 1] += sum_r Qat1[r, v] sigma(f[:, r, v])                   (right ends)

Under ``torch.compile`` (inductor: C++/OpenMP on CPU, Triton on CUDA) the (N, R, V)
intermediate is never materialised: each output element is one fused loop over its
slots; the backward is its own fused expression (ReLU and leaky ReLU), which recomputes
the states from the saved input instead of storing them.  The same
expression is what an enclosing ``torch.compile`` of a user's model traces, so compiled
models get the fused kernel too.  ``y`` then goes through the output map (identity for
``q="normalized"``/``"same"``, a tridiagonal solve for the dual), as in the eager kernel.

:mod:`.fused` compiles these expressions (``implementation="fused"``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._autocast import own_precision
from .band import _BandKernel, _BandPart
from .common import Nonlinearity
from .tridiag import _OutputMap


def _scatter_ends(out: torch.Tensor, part: _BandPart, to_left: torch.Tensor, to_right: torch.Tensor) -> torch.Tensor:
    if part.identity:
        return out + F.pad(to_left, (0, 1)) + F.pad(to_right, (1, 0))
    return out.index_add(1, part.rows, to_left).index_add(1, part.rows + 1, to_right)


def _states(z: torch.Tensor, part: _BandPart) -> torch.Tensor:
    """The states at all of the part's nodes, (N, R, V): never materialised once compiled."""
    left, right = part.ends(z)
    return part.A[0] * left[:, None, :] + part.A[1] * right[:, None, :]


def band_expression(z: torch.Tensor, kern: _BandKernel, sigma: Nonlinearity,
                    basis: torch.Tensor | None = None) -> torch.Tensor:
    """(N, d) -> (N, d) before the output map, in plain differentiable tensor ops."""
    y = z.new_zeros(z.shape[0], kern.d)
    for part in kern.parts:
        act = sigma(_states(z, part))
        y = _scatter_ends(y, part, (part.Qat[0] * act).sum(1), (part.Qat[1] * act).sum(1))
    return y


class _OutputMapFn(torch.autograd.Function):
    """``K^T v`` along the features, with backward ``K g`` (the output map as an autograd op)."""

    @staticmethod
    @own_precision
    def forward(ctx, v: torch.Tensor, out: _OutputMap) -> torch.Tensor:  # type: ignore[override]
        ctx.out = out
        y = v.contiguous().clone()
        out.forward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    @own_precision
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return ctx.out.backward(g.contiguous()), None


def apply_output_map(y: torch.Tensor, kern: _BandKernel) -> torch.Tensor:
    return y if kern.out.kind == "identity" else _OutputMapFn.apply(y, kern.out)


def band_expression_backward(z: torch.Tensor, gy: torch.Tensor, kern: _BandKernel,
                             negative_slope: float, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of :func:`band_expression` w.r.t. ``z`` for ReLU (``negative_slope`` 0) or
    leaky ReLU: the states are recomputed, never stored.  (N, d), (N, d) -> (N, d).
    (``basis`` is unused: the signature shared by every fused expression.)"""
    gz = z.new_zeros(z.shape[0], kern.d)
    for part in kern.parts:
        f = _states(z, part)
        g_left, g_right = part.ends(gy)
        g_act = part.Qat[0] * g_left[:, None, :] + part.Qat[1] * g_right[:, None, :]
        g_f = torch.where(f > 0, g_act, negative_slope * g_act)
        gz = _scatter_ends(gz, part, (part.A[0] * g_f).sum(1), (part.A[1] * g_f).sum(1))
    return gz
