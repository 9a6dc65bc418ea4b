"""The discretised IAT, ``y = Q^T diag(w) sigma(P z)``, as functions.

:func:`iat_reference` is the dense oracle: two matmuls, plain autograd, stores the
(..., M) intermediates for backward, supports double backward and trainable bases.

:func:`iat_fast` computes the same map with fixed bases, through the fastest
*structured kernel* that :func:`build_structure` found for ``P`` and ``Qw`` (the
detection is exact: each kernel is built from the matrices' entries and checked
against the dense products on random probes before it is accepted):

``select``
    every node sees exactly one basis function (rectangular bases).  Then
    ``sigma(P z) = P sigma(z)`` (values 1, any sigma; positive values, ReLU and
    leaky ReLU by positive homogeneity), so ``y = sigma(z) @ (P^T Qw)``: an
    element-wise op when ``P^T Qw`` is diagonal (``q`` dual/same/normalized), whose
    cost does not depend on M at all.
``band``
    every node sees at most two *neighbouring* basis functions (piecewise-linear
    hats, any quadrature).  The nodes are grouped by the interval between two hat
    centres, ``R`` slots per interval, and the kernel works batch-major on the
    (N, d) input as it comes: for each slot r, the state at the slot's nodes of
    all intervals is one element-wise op on the column slices ``z[:, :-1]`` and
    ``z[:, 1:]`` (the two ends of every interval), and its activation is
    accumulated in place onto the same two column ranges of the output.  No
    transposes, gathers or scatters: about 5R passes over (N, d - 1) arrays,
    O(N M) work instead of O(N M d).  The few nodes beyond R per interval (many
    for Gauss-Legendre) are extra one-slot rows handled with ``index_select`` and
    ``index_add_``.  Beyond ``settings.iat_band_max_slots`` slots (M > 32 d) the generic path
    is faster and is used.
``fourier``
    the Fourier basis at midpoint nodes: ``P z`` is a sine/cosine series on a
    uniform grid, evaluated by an inverse real FFT of length M (with a half-cell
    phase factor), and ``P^T r`` by a forward real FFT: O(N M log M).
``generic``
    the remaining cases: ``P``, ``Qw`` as CSR (sparse) or dense matrices.

The output side of ``band`` and ``fourier`` uses ``Qw = diag(w) P K``: with
``K`` diagonal (``q="same"``, ``"normalized"``, and ``"dual"`` for orthogonal
bases) it is a scale; with ``K = T^{-1}`` for a tridiagonal ``T`` (``q="dual"``
of the hats: ``T`` is their Gram matrix, and the dual basis is *dense*) ``y``
solves ``T^T y = v``, done as an LU factorisation whose two bidiagonal solves are
first-order linear recurrences, evaluated as log-depth scans (a few shifted
multiply-adds over the whole batch, truncated once the products of the
recurrence coefficients fall below the dtype's resolution).

Every kernel keeps only the input ``z`` for backward and recomputes the M-wide
state there (for ReLU the backward needs just the sign pattern, but a saved mask
would take M bytes per sample against 4d for ``z`` in float32: no saving at
M = 4d, and recomputing costs one batched product), so a training step stores
O(N d) instead of O(N M) numbers per layer.  The M-wide intermediates are
processed in chunks of rows (``settings.iat_chunk_elements`` and ``iat_band_chunk_elements``), so the
transient memory is a few chunk buffers rather than (N, M) tensors.  ReLU and leaky ReLU
use hand-written derivatives (the fused ``threshold_backward``); any other
nonlinearity is differentiated by autograd on the recomputed chunk.

Half precision and bases without structure (e.g. zero-mean local bases, whose
``P`` is dense, or an explicit output family for the hats) take the ``generic``
path.  Bases converted from float32 to float64 keep float32-rounded values
that no longer factor to float64 precision; they take it too, so that the fast
path stays equal to the reference to round-off.

``Qw`` below always means ``diag(w) Q`` (M, m): the quadrature weights are
folded into the output basis once, at construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .._autocast import own_precision
from .kernels.band import _band_backward, _band_forward, _band_kernel, _BandKernel
from .kernels.common import Nonlinearity, _tol
from .kernels.fourier import _fourier_backward, _fourier_forward, _fourier_kernel, _FourierKernel
from .kernels.fused import fused_iat
from .kernels.generic import _as_operator, _forward_t, _IATRecompute
from .kernels.select import _select_forward, _select_kernel, _SelectKernel

__all__ = ["NONLINEARITIES", "Nonlinearity", "StructuredIAT", "build_structure", "iat_fast",
           "iat_reference", "resolve_nonlinearity"]

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


# The batch-major kernels' (forward, backward) pairs, for _RowwiseIAT and iat_fast.
_ROWWISE = {
    _BandKernel: (_band_forward, _band_backward),
    _FourierKernel: (_fourier_forward, _fourier_backward),
}


class _RowwiseIAT(torch.autograd.Function):
    """Band and Fourier kernels: save only the (N, d) input, recompute the state in backward."""

    @staticmethod
    @own_precision
    def forward(ctx, z, kern, sigma_name, sigma):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.kern, ctx.sigma_name, ctx.sigma = kern, sigma_name, sigma
        return _ROWWISE[type(kern)][0](z, kern, sigma_name, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    @own_precision
    def backward(ctx, gy):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        backward = _ROWWISE[type(ctx.kern)][1]
        return backward(ctx.kern, z, gy, ctx.sigma_name, ctx.sigma), None, None, None



Kernel = _SelectKernel | _BandKernel | _FourierKernel


@dataclass
class StructuredIAT:
    """The operators of one IAT with fixed bases.

    ``p`` = P (M, d), ``pt`` = P^T (d, M), ``qt`` = Qw^T (m, M), ``q`` = Qw (M, m),
    each dense or CSR (:func:`_as_operator` with ``max_density``), for the generic path
    (feature-major: ``ft = p @ zt``).  They are built on first use: a layer served by
    a structured ``kernel`` (found for (P, Qw), or None) never needs these copies.
    """

    P: torch.Tensor
    Qw: torch.Tensor
    max_density: float = 0.1
    kernel: Kernel | None = field(default=None)

    @functools.cached_property
    def p(self) -> torch.Tensor:
        return _as_operator(self.P, self.max_density)

    @functools.cached_property
    def pt(self) -> torch.Tensor:
        return _as_operator(self.P.t(), self.max_density)

    @functools.cached_property
    def qt(self) -> torch.Tensor:
        return _as_operator(self.Qw.t(), self.max_density)

    @functools.cached_property
    def q(self) -> torch.Tensor:
        return _as_operator(self.Qw, self.max_density)

    @property
    def sparse(self) -> tuple[bool, bool]:
        """Whether the generic path applies P and Qw as sparse matrices."""
        return (self.p.layout == torch.sparse_csr, self.qt.layout == torch.sparse_csr)

    def kernel_for(self, sigma_name: str) -> Kernel | None:
        """The structured kernel if it is exact for this nonlinearity, else None."""
        if self.kernel is not None and self.kernel.supports(sigma_name):
            return self.kernel
        return None

    def kernel_name(self, sigma_name: str = "relu") -> str:
        """``"select"``, ``"band"``, ``"fourier"`` or ``"generic"``: what :func:`iat_fast` runs."""
        kern = self.kernel_for(sigma_name)
        return "generic" if kern is None else kern.name


def _find_kernel(
    P: torch.Tensor, Qw: torch.Tensor, weights: torch.Tensor | None
) -> Kernel | None:
    """Detect a structured kernel in float64, then cast it to P's dtype and device.

    Half-precision bases only get ``select``: its test is structural (one non-zero per
    row of P, an exactly diagonal P^T Qw), which rounding does not disturb, while the
    band and Fourier factorisations cannot be confirmed at half precision.
    """
    if P.numel() == 0:
        return None
    half = P.dtype not in (torch.float32, torch.float64)
    tol = _tol(torch.float32 if half else P.dtype)
    P64 = P.detach().to("cpu", torch.float64)
    Q64 = Qw.detach().to("cpu", torch.float64)
    kern = _select_kernel(P64, Q64, tol)
    if kern is None and weights is not None and not half:
        w64 = weights.detach().to("cpu", torch.float64)
        if w64.shape != (P64.shape[0],):
            raise ValueError(f"weights must have shape ({P64.shape[0]},), got {tuple(w64.shape)}")
        kern = _band_kernel(P64, Q64, w64, tol)
        if kern is None:
            kern = _fourier_kernel(P64, Q64, w64, tol)
    return None if kern is None else kern.to(device=P.device, dtype=P.dtype)


def build_structure(
    P: torch.Tensor,
    Qw: torch.Tensor,
    max_density: float = 0.1,
    weights: torch.Tensor | None = None,
    kernels: bool = True,
) -> StructuredIAT:
    """Detect the structure of ``P`` (M, d) and ``Qw`` (M, m) and build the operators.

    Args:
        P, Qw: the discretised bases (as in :func:`iat_reference`).
        max_density: the generic path stores a matrix as CSR when at most this share
            of it is non-zero (below that a CSR product beats a dense BLAS call on CPU).
        weights: (M,) quadrature weights.  The ``band`` and ``fourier`` kernels need
            them to factor ``Qw = diag(w) P K``; without them only ``select`` (which
            needs ``P^T Qw`` alone) can be found.
        kernels: look for the structured kernels at all (False: generic path only).
    """
    P = P.detach()
    Qw = Qw.detach()
    kernel = _find_kernel(P, Qw, weights) if kernels else None
    return StructuredIAT(P=P, Qw=Qw, max_density=max_density, kernel=kernel)


def iat_fast(
    z: torch.Tensor, ops: StructuredIAT, sigma_name: str = "relu", sigma: Nonlinearity = torch.relu,
    fused: bool = False,
) -> torch.Tensor:
    """Structured, memory-saving discretised IAT; same values as :func:`iat_reference`.

    Runs ``ops``'s structured kernel when there is one for ``sigma_name`` (see the
    module docstring), else the generic CSR/dense path.  Every path saves only the
    input for backward and is differentiable once.

    Args:
        z: (..., d) input.
        ops: operators from :func:`build_structure` (bases are constants here).
        sigma_name: name from :func:`resolve_nonlinearity` (selects hand-written
            derivatives; other names use autograd on ``sigma``).
        sigma: the element-wise nonlinearity.
        fused: run the structured kernel through ``torch.compile`` (:mod:`.kernels.fused`);
            the generic path, nonlinearities other than ReLU / leaky ReLU and machines
            where compiling fails use the eager kernels.

    Returns:
        (..., m)
    """
    lead = z.shape[:-1]
    d, m = ops.P.shape[1], ops.Qw.shape[1]
    kern = ops.kernel_for(sigma_name)
    grad = torch.is_grad_enabled() and z.requires_grad
    if fused and kern is not None and z.numel() > 0:
        y = fused_iat(z.reshape(-1, d).contiguous(), kern, sigma_name, sigma, ops.P)
        if y is not None:
            return y.reshape(*lead, m)
    if isinstance(kern, _SelectKernel):
        return _select_forward(z, kern, sigma)
    if type(kern) in _ROWWISE and z.numel() > 0:  # batch-major
        z2 = z.reshape(-1, d).contiguous()
        fn = _RowwiseIAT.apply if grad else _ROWWISE[type(kern)][0]
        return fn(z2, kern, sigma_name, sigma).reshape(*lead, m)
    zt = z.reshape(-1, d).t().contiguous()  # (d, N): the generic path is feature-major
    if grad:
        yt = _IATRecompute.apply(zt, ops, sigma_name, sigma)
    else:
        yt = _forward_t(ops, zt, sigma)
    # A transposed view: the next Linear's matmul reads it without a copy.
    return yt.t().reshape(*lead, m)
