"""Kernel ``band``, fused: the hats' IAT as one element-wise expression that a compiler fuses.

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

:func:`band_fused` compiles once per (device type, dtype, nonlinearity) with a dynamic
batch dimension and falls back to the eager kernel, with one warning, where no compiler
works.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

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


def band_expression(z: torch.Tensor, kern: _BandKernel, sigma: Nonlinearity) -> torch.Tensor:
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
                             negative_slope: float) -> torch.Tensor:
    """Gradient of :func:`band_expression` w.r.t. ``z`` for ReLU (``negative_slope`` 0) or
    leaky ReLU: the states are recomputed, never stored.  (N, d), (N, d) -> (N, d)."""
    gz = z.new_zeros(z.shape[0], kern.d)
    for part in kern.parts:
        f = _states(z, part)
        g_left, g_right = part.ends(gy)
        g_act = part.Qat[0] * g_left[:, None, :] + part.Qat[1] * g_right[:, None, :]
        g_f = torch.where(f > 0, g_act, negative_slope * g_act)
        gz = _scatter_ends(gz, part, (part.A[0] * g_f).sum(1), (part.A[1] * g_f).sum(1))
    return gz


#: Nonlinearities with a fused backward: name -> slope for negative states.
FUSED_SIGMAS = {"relu": 0.0, "leaky_relu": 0.01}

_compiled: dict[tuple[str, torch.dtype, str, str], Callable] = {}
_failed: set[str] = set()
_lock = threading.Lock()


def _compiled_pair(device_type: str, dtype: torch.dtype, sigma_name: str,
                   sigma: Nonlinearity) -> tuple[Callable, Callable]:
    """Compiled forward and backward expressions, once per (device type, dtype, sigma),
    with a dynamic batch dimension.  Neither records autograd: the autograd Function
    below saves only ``z``, so backward may run with retain_graph=True."""
    slope = FUSED_SIGMAS[sigma_name]

    def forward(z: torch.Tensor, kern: _BandKernel) -> torch.Tensor:
        return band_expression(z, kern, sigma)

    def backward(z: torch.Tensor, gy: torch.Tensor, kern: _BandKernel) -> torch.Tensor:
        return band_expression_backward(z, gy, kern, slope)

    with _lock:
        for name, fn in (("forward", forward), ("backward", backward)):
            key = (device_type, dtype, sigma_name, name)
            if key not in _compiled:
                _compiled[key] = torch.compile(fn, dynamic=True, fullgraph=True)
        return (_compiled[device_type, dtype, sigma_name, "forward"],
                _compiled[device_type, dtype, sigma_name, "backward"])


class _FusedBand(torch.autograd.Function):
    @staticmethod
    @own_precision
    def forward(ctx, z: torch.Tensor, kern: _BandKernel, fns: tuple) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.kern, ctx.backward_fn = kern, fns[1]
        with torch.no_grad():
            return fns[0](z, kern)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @own_precision
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        with torch.no_grad():
            return ctx.backward_fn(z, gy.contiguous(), ctx.kern), None, None


def band_fused(z: torch.Tensor, kern: _BandKernel, sigma_name: str, sigma: Nonlinearity) -> torch.Tensor | None:
    """The band kernel through ``torch.compile``: (N, d) -> (N, d), differentiable once.

    Returns None, for the caller to run the eager kernel, for nonlinearities without a
    fused backward (anything but ReLU and leaky ReLU) and, after one warning per device
    type, where compiling fails (e.g. a machine without a C++ compiler).
    """
    device_type = z.device.type
    if sigma_name not in FUSED_SIGMAS or device_type in _failed:
        return None
    fns = _compiled_pair(device_type, z.dtype, sigma_name, sigma)
    try:
        y = _FusedBand.apply(z, kern, fns) if torch.is_grad_enabled() and z.requires_grad \
            else fns[0](z, kern)
        return apply_output_map(y, kern)
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: use the eager kernel
        _failed.add(device_type)
        warnings.warn(f"IAT implementation='fused' could not compile on {device_type} "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); using the "
                      "eager band kernel instead", RuntimeWarning, stacklevel=2)
        return None
