"""``implementation="fused"``: every structured kernel as an expression compiled by ``torch.compile``.

One source for CPU and GPU: each kernel file writes its map once as plain tensor ops
(:func:`~.select.select_expression`, :func:`~.band_fused.band_expression`,
:func:`~.fourier.fourier_expression`) together with its gradient for ReLU and leaky ReLU
(the ``*_backward`` twins, which recompute the M-wide state from the saved input).
Inductor turns each into fused loops (C++/OpenMP on CPU, Triton on CUDA), so the M-wide
intermediates of ``select`` and ``band`` are never materialised; the Fourier FFTs stay
library calls with the element-wise work around them fused.

Here they are compiled once per (device type, dtype, nonlinearity, layer signature,
direction) with a dynamic batch dimension and wrapped in one autograd Function that saves
only the input.  Where compiling fails (e.g. no C++ compiler), :func:`fused_iat` warns once per
device type and returns None, and the caller runs the eager kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ..._autocast import own_precision
from .band import _BandKernel
from .band_fused import apply_output_map, band_expression, band_expression_backward
from .common import Nonlinearity
from .fourier import _FourierKernel, dense_basis, fourier_expression, fourier_expression_backward
from .select import _SelectKernel, select_expression, select_expression_backward

#: Nonlinearities with a fused backward: name -> slope for negative states.
FUSED_SIGMAS = {"relu": 0.0, "leaky_relu": 0.01}

#: Specialisations (layer signatures x dtypes x devices) per expression before dynamo gives up.
RECOMPILE_LIMIT = 256

#: kernel class -> (forward expression, backward expression)
EXPRESSIONS: dict[type, tuple[Callable, Callable]] = {
    _SelectKernel: (select_expression, select_expression_backward),
    _BandKernel: (band_expression, band_expression_backward),
    _FourierKernel: (fourier_expression, fourier_expression_backward),
}

Kernel = _SelectKernel | _BandKernel | _FourierKernel

_compiled: dict[tuple, Callable] = {}
_failed: set[str] = set()
_lock = threading.Lock()


def _signature(obj: Any) -> Any:
    """What the compiled code specialises on in a kernel: its tensors' shapes and its
    Python scalars (sizes, flags), recursively.  Kernels that share a signature share
    one compiled function (its guards do not pin objects, so equal layers compile once)."""
    if isinstance(obj, torch.Tensor):
        return tuple(obj.shape)
    if dataclasses.is_dataclass(obj):
        return (type(obj).__name__,) + tuple(_signature(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return tuple(_signature(x) for x in obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return type(obj).__name__


def _kernel_signature(kern: Kernel) -> Any:
    """:func:`_signature` of ``kern``, kept on the kernel: walking a band kernel's parts
    takes ~30 us, on every call otherwise (kernels are rebuilt, never edited, when a
    layer's bases change)."""
    sig = kern.__dict__.get("_fused_signature")
    if sig is None:
        sig = kern.__dict__["_fused_signature"] = _signature(kern)
    return sig


def _compiled_pair(device_type: str, dtype: torch.dtype, sigma_name: str, sigma: Nonlinearity,
                   kern: Kernel) -> tuple[Callable, Callable, Callable]:
    """Compiled forward and backward expressions of ``kern``'s kind, and the backward
    uncompiled (for a backward whose compilation fails).  None records autograd:
    :class:`_Fused` saves only ``z``, so backward may run with retain_graph."""
    slope = FUSED_SIGMAS[sigma_name]
    expression, gradient = EXPRESSIONS[type(kern)]

    def forward(z: torch.Tensor, kern: Kernel, basis: torch.Tensor | None) -> torch.Tensor:
        return expression(z, kern, sigma, basis)

    def backward(z: torch.Tensor, gy: torch.Tensor, kern: Kernel, basis: torch.Tensor | None) -> torch.Tensor:
        return gradient(z, gy, kern, slope, basis)

    with _lock:
        sig = (device_type, dtype, sigma_name, _kernel_signature(kern))
        keys = [(*sig, name) for name in ("forward", "backward")]
        for key, fn in zip(keys, (forward, backward), strict=True):
            if key not in _compiled:
                _compiled[key] = torch.compile(fn, dynamic=True, fullgraph=True)
        return _compiled[keys[0]], _compiled[keys[1]], backward


@contextlib.contextmanager
def _compiled_call() -> Iterator[None]:
    """Around every call of a compiled expression.  All expressions of one kind share the
    code object that dynamo counts recompilations against (default limit 8), and every
    layer size is one specialisation: the limit is raised for these calls only.  And
    inductor warns that it generates no code for complex tensors: the FFTs' complex
    inputs and outputs are library calls here by design, so the warning is dropped."""
    with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        warnings.filterwarnings("ignore", message=".*code generation for complex operators")
        yield


class _Fused(torch.autograd.Function):
    """A compiled (forward, backward) pair; saves only the (N, d) input."""

    @staticmethod
    @own_precision
    def forward(ctx, z: torch.Tensor, kern: Kernel, basis: torch.Tensor | None,  # type: ignore[override]
                fns: tuple) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.kern, ctx.basis, ctx.fns = kern, basis, fns
        with torch.no_grad():
            return fns[0](z, kern, basis)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @own_precision
    def backward(ctx, gy: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        args = (z, gy.contiguous(), ctx.kern, ctx.basis)
        with torch.no_grad():
            if z.device.type not in _failed:
                try:
                    with _compiled_call():
                        return ctx.fns[1](*args), None, None, None
                except Exception as exc:  # noqa: BLE001 -- the same expression, uncompiled
                    _give_up(z.device.type, exc)
            return ctx.fns[2](*args), None, None, None


def fused_iat(z: torch.Tensor, kern: Kernel, sigma_name: str, sigma: Nonlinearity,
              P: torch.Tensor) -> torch.Tensor | None:
    """A structured kernel through ``torch.compile``: (N, d) -> (N, m), differentiable once.

    ``P`` (M, d) is the discretised input basis (the Fourier kernel's dense form uses it
    below the FFT crossover).  Returns None, for the caller to run the eager kernel, for
    nonlinearities without a fused backward (anything but ReLU and leaky ReLU) and, after
    one warning per device type, where compiling fails.
    """
    device_type = z.device.type
    if sigma_name not in FUSED_SIGMAS or device_type in _failed:
        return None
    basis = dense_basis(kern, P) if isinstance(kern, _FourierKernel) else None
    fns = _compiled_pair(device_type, z.dtype, sigma_name, sigma, kern)
    try:
        with _compiled_call():
            if torch.is_grad_enabled() and z.requires_grad:
                y = _Fused.apply(z, kern, basis, fns)
            else:
                y = fns[0](z, kern, basis)
        return apply_output_map(y, kern) if isinstance(kern, _BandKernel) else y
    except Exception as exc:  # noqa: BLE001 -- any compiler failure: use the eager kernel
        _give_up(device_type, exc)
        return None


def _give_up(device_type: str, exc: Exception) -> None:
    """Stop compiling for this device type, with one warning."""
    _failed.add(device_type)
    warnings.warn(f"IAT implementation='fused' could not compile on {device_type} "
                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); using the "
                  "eager kernels instead", RuntimeWarning, stacklevel=3)


def traced_expression(z: torch.Tensor, kern: Kernel, sigma: Nonlinearity, P: torch.Tensor) -> torch.Tensor:
    """What an enclosing ``torch.compile`` of a user's model traces for ``kern``: the same
    expression, differentiated by autograd (N, d) -> (N, m), before the band's output map."""
    basis = dense_basis(kern, P) if isinstance(kern, _FourierKernel) else None
    return EXPRESSIONS[type(kern)][0](z, kern, sigma, basis)
