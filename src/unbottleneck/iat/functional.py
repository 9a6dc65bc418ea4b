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
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import settings
from .._autocast import own_precision

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
# sigma(c x) = c sigma(x) for c > 0: the select kernel may pull positive values of P out.
_HOMOGENEOUS = ("relu", "leaky_relu")


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
# Helpers shared by the fast kernels
# --------------------------------------------------------------------------------------


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


def _chunk(total: int, per_item: int, budget: int | None = None) -> int:
    """How many of ``total`` items (``per_item`` elements each) one chunk of ``budget``
    elements (default ``settings.iat_chunk_elements``) takes."""
    budget = settings.get().iat_chunk_elements if budget is None else budget
    return max(1, min(total, budget // max(per_item, 1)))


# --------------------------------------------------------------------------------------
# Output side: Qw = diag(w) P K with K diagonal or the inverse of a tridiagonal T
# --------------------------------------------------------------------------------------


@dataclass
class _Scan:
    """First-order linear recurrence along dim 0 as a log-depth scan.

    Computes ``x_i = b_i + c_i x_{i-1}`` (``reverse``: ``x_{i+1}``) for every column at
    once: level l adds ``C_l[i] * x[i - 2^l]``, where ``C_l[i]`` is the product of the
    2^l coefficients that term spans.  With |c| < 1 the products decay
    geometrically; levels stop once they are all below the threshold (far below the
    dtype's resolution), so only a handful of shifted multiply-adds are needed.
    """

    shifts: list[int]
    coeffs: list[torch.Tensor]  # level l: (n - shift, 1)
    reverse: bool

    @staticmethod
    def build(c: torch.Tensor, reverse: bool, threshold: float) -> _Scan:
        """``c`` (n,) float64 coefficients (``c[0]``, or ``c[-1]`` if reverse, unused)."""
        c = c.clone()
        n = c.numel()
        if reverse:
            c[-1] = 0.0
        else:
            c[0] = 0.0
        shifts: list[int] = []
        coeffs: list[torch.Tensor] = []
        s = 1
        while s < n and float(c.abs().max()) > threshold:
            nxt = torch.zeros_like(c)
            if reverse:
                coeffs.append(c[: n - s, None].clone())
                nxt[: n - s] = c[: n - s] * c[s:]
            else:
                coeffs.append(c[s:, None].clone())
                nxt[s:] = c[s:] * c[: n - s]
            shifts.append(s)
            c = nxt
            s *= 2
        return _Scan(shifts, coeffs, reverse)

    def to(self, **kw) -> _Scan:
        return _Scan(self.shifts, [c.to(**kw) for c in self.coeffs], self.reverse)

    def apply(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(n, N) -> (n, N).  Level 1 reads ``x`` (any strides, never written) into ``a``,
        later levels ping-pong between ``a`` and ``b`` (``b`` may be ``x`` itself if ``x``
        may be overwritten).  Returns ``x`` when there are no levels."""
        for s, c in zip(self.shifts, self.coeffs, strict=True):
            if self.reverse:
                torch.addcmul(x[:-s], c, x[s:], out=a[:-s])
                a[-s:] = x[-s:]
            else:
                torch.addcmul(x[s:], c, x[:-s], out=a[s:])
                a[:s] = x[:s]
            x, a, b = a, b, a
        return x


@dataclass
class _TridiagSolve:
    """Solve ``S y = v`` (dim 0) for a tridiagonal ``S = L U`` factorised without pivoting."""

    first: _Scan  # L x = v: x_i = v_i - l_i x_{i-1}
    inv_u: torch.Tensor  # (n, 1)
    second: _Scan  # U y = x: y_i = x_i / u_i - (s_i / u_i) y_{i+1}

    def to(self, **kw) -> _TridiagSolve:
        return _TridiagSolve(self.first.to(**kw), self.inv_u.to(**kw), self.second.to(**kw))

    def apply(self, v: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Solve for the columns of ``v`` (n, N, never written) with scratch ``a``, ``b``."""
        x = self.first.apply(v, a, b)
        if x is v:
            x = torch.mul(v, self.inv_u, out=a)
        else:
            x.mul_(self.inv_u)
        spare = b if x is a else a
        return self.second.apply(x, spare, x)


def _tridiag_solver(
    lower: torch.Tensor, diag: torch.Tensor, upper: torch.Tensor, threshold: float
) -> _TridiagSolve | None:
    """LU of the tridiagonal ``S`` (``S[i, i-1] = lower[i-1]``, ``S[i, i+1] = upper[i]``).

    Returns None unless both recurrences contract (|coefficient| <= 0.9), which holds
    for diagonally dominant ``S`` such as the Gram matrix of the hat functions
    (interior ratio 1 : 4 : 1, coefficient about 2 - sqrt(3) = 0.27).
    """
    n = diag.numel()
    lo, dg, up = lower.tolist(), diag.tolist(), upper.tolist()
    u = [dg[0]]
    lf = [0.0]
    for i in range(1, n):
        if u[-1] == 0.0:
            return None
        lf.append(lo[i - 1] / u[-1])
        u.append(dg[i] - lf[-1] * up[i - 1])
    if any(x == 0.0 for x in u):
        return None
    u_t = torch.tensor(u, dtype=torch.float64)
    c1 = -torch.tensor(lf, dtype=torch.float64)
    c2 = torch.zeros(n, dtype=torch.float64)
    if n > 1:
        c2[:-1] = -torch.tensor(up, dtype=torch.float64) / u_t[:-1]
    if float(c1.abs().max()) > 0.9 or float(c2.abs().max()) > 0.9:
        return None
    return _TridiagSolve(
        _Scan.build(c1, reverse=False, threshold=threshold),
        (1.0 / u_t)[:, None],
        _Scan.build(c2, reverse=True, threshold=threshold),
    )


@dataclass
class _OutputMap:
    """``y = K^T v`` and its transpose ``g_v = K g_y`` along the features (dim 1).

    ``scale``: K is diagonal (kernels fold it into their coefficients, leaving the
    identity, ``scale = fwd = None``).  Otherwise ``K = T^{-1}`` with T tridiagonal:
    ``fwd`` solves ``T^T y = v`` and ``bwd`` solves ``T x = g``.
    """

    scale: torch.Tensor | None = None  # (d,)
    fwd: _TridiagSolve | None = None
    bwd: _TridiagSolve | None = None

    @property
    def kind(self) -> str:
        if self.fwd is not None:
            return "tridiagonal"
        return "identity" if self.scale is None else "diagonal"

    def to(self, **kw) -> _OutputMap:
        return _OutputMap(
            None if self.scale is None else self.scale.to(**kw),
            None if self.fwd is None else self.fwd.to(**kw),
            None if self.bwd is None else self.bwd.to(**kw),
        )

    def forward(self, v: torch.Tensor) -> None:
        """``y = K^T v`` along dim 1 of ``v`` (n, d), written over ``v``."""
        if self.fwd is not None:
            # The scans run along dim 0: give them the transposed views.
            y = self.fwd.apply(v.t(), torch.empty_like(v).t(), v.t())
            if y.data_ptr() != v.data_ptr():
                v.copy_(y.t())
        elif self.scale is not None:
            v.mul_(self.scale)

    def backward(self, g: torch.Tensor) -> torch.Tensor:
        """``K g`` along dim 1 of ``g`` (n, d), any strides, never written (returned
        as it is for the identity)."""
        if self.fwd is not None:
            out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
            return self.bwd.apply(g.t(), out.t(), torch.empty_like(out).t()).t()
        return g if self.scale is None else g * self.scale


def _output_map(P: torch.Tensor, Qw: torch.Tensor, w: torch.Tensor, tol: float) -> _OutputMap | None:
    """Find ``Qw = diag(w) P T^{-1}`` with T diagonal or tridiagonal (float64 inputs), or None.

    The diagonal fit has one unknown per column.  Otherwise each column j of
    ``Qw T = diag(w) P`` involves three unknowns ``T[j-1, j], T[j, j], T[j+1, j]``,
    fitted by least squares (3 x 3 normal equations per column, O(M d) work).  A
    fit is accepted only if the residual of the whole identity is below ``tol``
    relative to ``diag(w) P``.
    """
    M, d = P.shape
    if Qw.shape[1] != d:
        return None
    B = w[:, None] * P
    scale_b = float(B.abs().max())
    if scale_b == 0.0:
        return None
    # Diagonal K (q = same / normalized, the dual of an orthogonal basis).  A function no
    # node sees (M < d) has zero columns on both sides: any T[j, j] fits, take 1.
    qq, qb = (Qw * Qw).sum(0), (Qw * B).sum(0)
    empty = (qq == 0) & (B == 0).all(0)
    t_dg = torch.where(empty, torch.ones_like(qq), qb / torch.where(qq == 0, 1.0, qq))
    if bool((t_dg != 0).all()) and float((Qw * t_dg - B).abs().max()) <= tol * scale_b:
        return _OutputMap(scale=1.0 / t_dg)
    Qp = F.pad(Qw, (1, 1))  # zero columns at both ends: boundary columns have 2 unknowns
    d0 = (Qp * Qp).sum(0)
    d1 = (Qp[:, :-1] * Qp[:, 1:]).sum(0)
    d2 = (Qp[:, :-2] * Qp[:, 2:]).sum(0)
    j = torch.arange(d)
    A = torch.stack(
        [
            torch.stack([d0[j], d1[j], d2[j]], -1),
            torch.stack([d1[j], d0[j + 1], d1[j + 1]], -1),
            torch.stack([d2[j], d1[j + 1], d0[j + 2]], -1),
        ],
        1,
    )  # (d, 3, 3)
    zero_col = torch.stack([d0[j], d0[j + 1], d0[j + 2]], -1) == 0
    A = A + torch.diag_embed(zero_col.to(A.dtype))  # a missing neighbour's unknown -> 0
    rhs = torch.stack([(Qp[:, :d] * B).sum(0), qb, (Qp[:, 2:] * B).sum(0)], -1)
    try:
        t = torch.linalg.solve(A, rhs)
    except RuntimeError:  # singular: degenerate supports (M < d); no structure to use
        return None
    if not bool(torch.isfinite(t).all()):
        return None
    t_up, t_dg, t_lo = t[:, 0], t[:, 1], t[:, 2]  # T[j-1, j], T[j, j], T[j+1, j]
    resid = Qp[:, :d] * t_up + Qw * t_dg + Qp[:, 2:] * t_lo - B
    if float(resid.abs().max()) > tol * scale_b:
        return None
    threshold = tol / 4096  # eps / 16 of the target dtype: truncated terms are invisible
    fwd = _tridiag_solver(t_up[1:], t_dg, t_lo[:-1], threshold)  # T^T
    bwd = _tridiag_solver(t_lo[:-1], t_dg, t_up[1:], threshold)  # T
    if fwd is None or bwd is None:
        return None
    return _OutputMap(fwd=fwd, bwd=bwd)


# --------------------------------------------------------------------------------------
# Kernel "select": one basis function per node (rectangular bases)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Kernel "band": two neighbouring basis functions per node (piecewise-linear hats)
# --------------------------------------------------------------------------------------


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den != 0``, else 0."""
    return torch.where(den != 0, num / torch.where(den != 0, den, 1), 0)


@dataclass
class _BandPart:
    """Nodes in padded slots: slot r of row v is a node of interval ``rows[v]``.

    ``A[0, r, v]`` and ``A[1, r, v]`` are the coefficients of ``z_j`` and ``z_{j+1}``
    (j = ``rows[v]``) in the state at that node, ``Qat[0/1, r, v]`` those of the output
    side (``w`` and a diagonal K folded in); padding slots are zero, so they add nothing
    either way.  The kernels loop over the R slots, each step an element-wise op on
    (rows, V) arrays.

    A state is an interpolation between the interval's end values,
    ``A0 z_l + A1 z_r = norm * lerp(z_l, z_r, rho)`` with ``norm = A0 + A1`` (1 for
    hats) and ``rho = A1 / norm``, and the gradient w.r.t. the activated state likewise
    ``qn * lerp(g_l, g_r, kappa)``: one fused op each instead of a product and a
    multiply-add.  For a positively homogeneous sigma the scales fold exactly into
    the coefficients of the other side (``sigma(norm f) = norm sigma(f)`` and
    ``sigma'(norm f) = sigma'(f)`` for ``norm > 0``): ``Qf = Qat * norm`` for the
    output sums, ``Af = A * qn`` for the input gradient (``folded``).
    """

    rows: torch.Tensor  # (V,) interval of each row
    A: torch.Tensor  # (2, R, V)
    Qat: torch.Tensor  # (2, R, V)
    identity: bool  # rows == arange(d - 1): the interval ends are two slices of the input

    def __post_init__(self) -> None:
        A, Q = self.A, self.Qat
        norm, qn = A.sum(0), Q.sum(0)
        pad_a, pad_q = (A == 0).all(0), (Q == 0).all(0)
        self.folded = bool(((norm > 0) | pad_a).all()) and bool(((qn != 0) | pad_q).all())
        # Per-slot (V,) rows, sliced once: the slot loops would otherwise pay for the
        # indexing ops on every call.
        self.rho = list(_ratio(A[1], norm).unbind(0))
        self.kappa = list(_ratio(Q[1], qn).unbind(0))
        self.a, self.q = _slot_pairs(A), _slot_pairs(Q)
        self.qf, self.af = _slot_pairs(Q * norm), _slot_pairs(A * qn)

    @property
    def R(self) -> int:
        return self.A.shape[1]

    def to(self, **kw) -> _BandPart:
        return _BandPart(
            self.rows.to(kw.get("device")), self.A.to(**kw), self.Qat.to(**kw), self.identity
        )

    def ends(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, d) -> the values at the left and right end of every row's interval, (n, V) each."""
        if self.identity:
            return x[:, :-1], x[:, 1:]
        return x.index_select(1, self.rows), x.index_select(1, self.rows + 1)

    @staticmethod
    def expand(ends: tuple[torch.Tensor, torch.Tensor], c: tuple[torch.Tensor, torch.Tensor],
               out: torch.Tensor) -> torch.Tensor:
        """``out = c[0] * left + c[1] * right`` (n, V): with slot r's ``a`` the state at
        its nodes, with its ``q`` the gradient w.r.t. the activated state."""
        torch.mul(ends[0], c[0], out=out)
        return out.addcmul_(ends[1], c[1])

    @staticmethod
    def interpolate(ends: tuple[torch.Tensor, torch.Tensor], weight: torch.Tensor,
                    out: torch.Tensor) -> torch.Tensor:
        """``lerp(left, right, weight)``: :meth:`expand` up to the scale ``norm``
        (``weight = rho``) or ``qn`` (``weight = kappa``)."""
        return torch.lerp(ends[0], ends[1], weight, out=out)

    def accumulate(
        self, r: int, f: torch.Tensor, c: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor,
        scratch: torch.Tensor | None,
    ) -> None:
        """The transpose of :meth:`expand` for slot r: add ``c[0] * f`` to the rows' left
        ends of ``out`` (n, d) and ``c[1] * f`` to their right ends.

        The main part (run first) writes its left ends at slot 0 and zeroes the last
        column, so ``out`` needs no zero fill; both ends then accumulate in place
        (the two column ranges overlap, but each op reads only ``f``).  Extra rows
        scatter through ``scratch`` (n, V) with ``index_add_``.
        """
        if self.identity:
            if r == 0:
                torch.mul(f, c[0], out=out[:, :-1])
                out[:, -1] = 0
            else:
                out[:, :-1].addcmul_(f, c[0])
            out[:, 1:].addcmul_(f, c[1])
        else:
            out.index_add_(1, self.rows, torch.mul(f, c[0], out=scratch))
            out.index_add_(1, self.rows + 1, torch.mul(f, c[1], out=scratch))


def _slot_pairs(C: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(2, R, V) -> per slot r the pair of (V,) rows ``(C[0, r], C[1, r])``."""
    return list(zip(C[0].unbind(0), C[1].unbind(0), strict=True))


@dataclass
class _BandKernel:
    """Piecewise-linear kernel: nodes grouped by interval ``[c_j, c_{j+1}]``.

    ``main`` has exactly one row of ``R`` slots per interval (``R`` = the typical node
    count, e.g. 4 for M = 4d): its interval ends are the input's columns ``[:-1]`` and
    ``[1:]``, so each slot's state is one op on two slices and its terms are added
    onto the same two column ranges.  The few nodes beyond R per interval (and the
    surplus of rules with crowded intervals such as Gauss-Legendre) are ``extra``
    rows of one slot each, whose ends are gathered (``index_select``) and whose terms
    are scattered (``index_add_``).
    """

    d: int
    R: int
    main: _BandPart | None  # rows = arange(d - 1)
    extra: _BandPart | None
    out: _OutputMap
    name: str = "band"

    def to(self, **kw) -> _BandKernel:
        def cast(x):
            return None if x is None else x.to(**kw)

        return _BandKernel(self.d, self.R, cast(self.main), cast(self.extra), self.out.to(**kw))

    def supports(self, sigma_name: str) -> bool:
        return True

    @property
    def parts(self) -> list[_BandPart]:
        return [p for p in (self.main, self.extra) if p is not None]


def _band_kernel(
    P: torch.Tensor, Qw: torch.Tensor, w: torch.Tensor, tol: float
) -> _BandKernel | None:
    """Detect a two-band P (hats: at most two neighbouring non-zeros per node) in float64."""
    M, d = P.shape
    if d < 2:
        return None
    nz = P != 0
    if int(nz.sum(1).max()) > 2:
        return None
    cols = torch.arange(d)
    first = torch.where(nz, cols, d).min(1).values
    last = torch.where(nz, cols, -1).max(1).values
    has = nz.any(1)
    if bool(((last - first) > 1)[has].any()):
        return None
    out = _output_map(P, Qw, w, tol)
    if out is None:
        return None
    J = d - 1
    interval = torch.where(has, first.clamp(max=J - 1), 0)  # nodes seeing no function: 0
    k = torch.arange(M)
    coef = torch.stack([P[k, interval], P[k, interval + 1]], 0)  # (2, M)
    qcoef = w * coef
    if out.scale is not None:  # fold a diagonal K into the output coefficients
        qcoef = qcoef * torch.stack([out.scale[interval], out.scale[interval + 1]], 0)
        out = _OutputMap()
    counts = torch.bincount(interval, minlength=J)
    order = torch.argsort(interval, stable=True)
    iv = interval[order]
    rank = torch.arange(M) - (torch.cumsum(counts, 0) - counts)[iv]
    # Main rows take the first R = floor(M / J) nodes of every interval (all of them
    # for uniform rules but a few); each node beyond is an extra row of one slot (so
    # no padding: an interval holds at most R + 1 nodes for uniform rules).
    R = M // J
    if R > settings.get().iat_band_max_slots:
        return None  # the slot loops would cost more than the generic products

    def part(rows: torch.Tensor, row_of: torch.Tensor, slot: torch.Tensor, sel: torch.Tensor,
             slots: int, identity: bool) -> _BandPart:
        A = torch.zeros(2, slots, rows.numel(), dtype=P.dtype)
        Qat = torch.zeros_like(A)
        A[:, slot, row_of] = coef[:, sel]
        Qat[:, slot, row_of] = qcoef[:, sel]
        return _BandPart(rows, A, Qat, identity)

    in_main = rank < R
    main = extra = None
    if R > 0:
        main = part(torch.arange(J), iv[in_main], rank[in_main], order[in_main], R, True)
    if not bool(in_main.all()):
        E = int((~in_main).sum())
        extra = part(iv[~in_main], torch.arange(E), torch.zeros(E, dtype=torch.long),
                     order[~in_main], 1, False)
    kern = _BandKernel(d, R, main, extra, out)
    # Probe against the dense maps (catches any slip in the layout and the folding).
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, d, generator=gen, dtype=P.dtype)
    gy = torch.randn(3, d, generator=gen, dtype=P.dtype)
    f = z @ P.t()
    y_bound = tol * float(((z.abs() @ P.abs().t()) @ Qw.abs()).max())
    g_bound = tol * float(((gy.abs() @ Qw.abs().t()) @ P.abs()).max())
    # tanh takes the exact coefficients, ReLU the folded ones (when they exist)
    for name, y_ref, g_ref in (
        ("tanh", torch.tanh(f) @ Qw, ((1 - torch.tanh(f) ** 2) * (gy @ Qw.t())) @ P),
        ("relu", torch.relu(f) @ Qw, ((f > 0) * (gy @ Qw.t())) @ P),
    ):
        sigma = NONLINEARITIES[name]
        y = _band_forward(z, kern, name, sigma)
        g = _band_backward(kern, z, gy, name, sigma)
        if float((y - y_ref).abs().max()) > y_bound or float((g - g_ref).abs().max()) > g_bound:
            return None
    return kern


def _band_buffers(part: _BandPart, z: torch.Tensor, count: int) -> tuple[int, list, torch.Tensor | None]:
    """Rows per chunk, ``count`` (rows, V) work buffers, and the scratch of extra rows;
    all of them together hold about ``settings.iat_band_chunk_elements``."""
    V = part.A.shape[2]
    step = _chunk(z.shape[0], (count + (not part.identity)) * V, settings.get().iat_band_chunk_elements)
    bufs = [z.new_empty(step, V) for _ in range(count)]
    return step, bufs, None if part.identity else z.new_empty(step, V)


def _band_forward(
    z: torch.Tensor, kern: _BandKernel, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Batch-major (N, d) contiguous -> (N, d), each part in chunks of rows."""
    n = z.shape[0]
    y = z.new_empty(n, kern.d)
    if kern.main is None:
        y.zero_()
    for part in kern.parts:  # main first: it writes every column
        folded = part.folded and sigma_name in _HOMOGENEOUS
        step, (buf,), scratch = _band_buffers(part, z, 1)
        for i0 in range(0, n, step):
            zc = z[i0 : i0 + step]
            rows = zc.shape[0]
            ends, f, s = part.ends(zc), buf[:rows], None if scratch is None else scratch[:rows]
            for r in range(part.R):
                if folded:  # sigma(state / norm), summed with Qat * norm
                    part.interpolate(ends, part.rho[r], f)
                else:
                    part.expand(ends, part.a[r], f)
                coef = part.qf[r] if folded else part.q[r]
                part.accumulate(r, _apply_sigma(sigma_name, sigma, f), coef, y[i0 : i0 + step], s)
    if kern.out.kind != "identity":
        step = _chunk(n, kern.d, settings.get().iat_band_chunk_elements)
        for i0 in range(0, n, step):
            kern.out.forward(y[i0 : i0 + step])
    return y


def _band_backward(
    kern: _BandKernel, z: torch.Tensor, gy: torch.Tensor, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Gradient (N, d) w.r.t. the batch-major input; ``gy`` (N, d) may be strided."""
    n = z.shape[0]
    gv = kern.out.backward(gy)
    gz = z.new_empty(n, kern.d)
    if kern.main is None:
        gz.zero_()
    for part in kern.parts:
        folded = part.folded and sigma_name in _HOMOGENEOUS
        step, (fbuf, gbuf), scratch = _band_buffers(part, z, 2)
        for i0 in range(0, n, step):
            zc = z[i0 : i0 + step]
            rows = zc.shape[0]
            zends, gends = part.ends(zc), part.ends(gv[i0 : i0 + step])
            f, g, s = fbuf[:rows], gbuf[:rows], None if scratch is None else scratch[:rows]
            for r in range(part.R):
                if folded:  # the gradient w.r.t. sigma(f) / qn and the state / norm
                    part.interpolate(gends, part.kappa[r], g)
                    part.interpolate(zends, part.rho[r], f)
                else:
                    part.expand(gends, part.q[r], g)
                    part.expand(zends, part.a[r], f)  # the state, recomputed
                coef = part.af[r] if folded else part.a[r]
                grad_f = _sigma_backward(sigma_name, sigma, f, g)
                part.accumulate(r, grad_f, coef, gz[i0 : i0 + step], s)
    return gz


# --------------------------------------------------------------------------------------
# Kernel "fourier": real FFTs for the Fourier basis at midpoint nodes
# --------------------------------------------------------------------------------------


@dataclass
class _FourierKernel:
    """``P z`` by an inverse real FFT and ``P^T r`` by a forward one (batch-major).

    Midpoint nodes ``s_k = -1 + (2k + 1) / M`` give ``pi f s_k = f theta_k - f pi`` with
    ``theta_k = 2 pi (k + 1/2) / M``, so ``sin(f pi s_k) = (-1)^f sin(f theta_k)`` (same
    for cos) and the state is ``Re sum_f c_f e^{2 pi i f k / M}`` with
    ``c_f = (-1)^f e^{i pi f / M} (z_cos,f - i z_sin,f)``: an inverse DFT with a
    half-cell phase.  ``out_scale`` folds the (uniform) weight and diagonal K.
    """

    d: int
    M: int
    phase: torch.Tensor  # (F,) complex, (-1)^f e^{i pi f / M}
    out_scale: torch.Tensor  # (d,)
    name: str = "fourier"

    def to(self, **kw) -> _FourierKernel:
        dtype = kw.get("dtype", self.out_scale.dtype)
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return _FourierKernel(
            self.d, self.M, self.phase.to(device=kw.get("device"), dtype=cdtype),
            self.out_scale.to(**kw),
        )

    def supports(self, sigma_name: str) -> bool:
        return True

    def spectrum(self, n: int, like: torch.Tensor) -> torch.Tensor:
        """A zero half-spectrum buffer (n, M/2 + 1) for :meth:`synthesis`."""
        return torch.zeros(n, self.M // 2 + 1, dtype=self.phase.dtype, device=like.device)

    def synthesis(self, z: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
        """``P z``: (n, d) -> (n, M).  ``spec`` is zero outside bins 1..F (kept so)."""
        nf = self.phase.numel()
        zs, zc = z[:, 0::2], z[:, 1::2]  # sin(f pi s), cos(f pi s) coefficients
        nc = zc.shape[1]
        bins = spec[: z.shape[0], 1 : nf + 1]
        # bins = (M / 2) phase (z_cos - i z_sin): irfft's 1/M and the two conjugate halves.
        torch.mul(zs, self.phase * (-0.5j * self.M), out=bins)
        bins[:, :nc].add_(zc * (self.phase[:nc] * (0.5 * self.M)))
        return torch.fft.irfft(spec[: z.shape[0]], n=self.M)

    def analysis(self, r: torch.Tensor, out: torch.Tensor) -> None:
        """``out = P^T r``: (n, M) -> (n, d)."""
        nf = self.phase.numel()
        spec = torch.view_as_real(torch.fft.rfft(r)[:, 1 : nf + 1].conj() * self.phase)
        out[:, 0::2] = spec[..., 1]  # Im(phase * conj(R)): the sine coefficients
        out[:, 1::2] = spec[:, : self.d // 2, 0]  # Re: the cosines


def _fourier_kernel(
    P: torch.Tensor, Qw: torch.Tensor, w: torch.Tensor, tol: float
) -> _FourierKernel | None:
    from .basis import fourier

    M, d = P.shape
    nf = (d + 1) // 2
    if 2 * nf >= M:  # the highest frequency must stay below Nyquist
        return None
    nodes = -1.0 + (2.0 * torch.arange(M, dtype=torch.float64) + 1.0) / M
    if float((P - fourier(nodes, d)).abs().max()) > tol:
        return None
    if float((w - 2.0 / M).abs().max()) > tol * 2.0 / M:
        return None
    out = _output_map(P, Qw, w, tol)
    if out is None or out.scale is None:
        return None
    f = torch.arange(1, nf + 1, dtype=torch.float64)
    phase = (1.0 - 2.0 * (f % 2)) * torch.exp(1j * math.pi * f / M)
    kern = _FourierKernel(d, M, phase, out.scale * (2.0 / M))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, d, generator=gen, dtype=torch.float64)
    r = torch.randn(3, M, generator=gen, dtype=torch.float64)
    v = torch.empty(3, d, dtype=torch.float64)
    kern.analysis(r, v)
    ok = float((kern.synthesis(z, kern.spectrum(3, z)) - z @ P.t()).abs().max()) <= tol * float(
        z.abs().sum(1).max()
    )
    ok = ok and float((v - r @ P).abs().max()) <= tol * float(r.abs().sum(1).max())
    return kern if ok else None


def _fourier_forward(
    z: torch.Tensor, kern: _FourierKernel, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Batch-major (N, d) -> (N, d), in chunks of rows."""
    n = z.shape[0]
    y = z.new_empty(n, kern.d)
    step = _chunk(n, 3 * kern.M)  # per row: the spectrum, the state and its transform
    spec = kern.spectrum(min(step, n), z)
    for i0 in range(0, n, step):
        f = kern.synthesis(z[i0 : i0 + step], spec)
        kern.analysis(_apply_sigma(sigma_name, sigma, f), y[i0 : i0 + step])
    return y.mul_(kern.out_scale)


def _fourier_backward(
    kern: _FourierKernel, z: torch.Tensor, gy: torch.Tensor, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Gradient (N, d) w.r.t. the batch-major input, the state recomputed chunk by chunk."""
    # gz overwrites gs chunk by chunk: each chunk of gs is read before it is written.
    gz = gs = gy * kern.out_scale
    n = z.shape[0]
    step = _chunk(n, 3 * kern.M)
    spec = kern.spectrum(min(step, n), z)
    for i0 in range(0, n, step):
        grad_r = kern.synthesis(gs[i0 : i0 + step], spec)
        f = kern.synthesis(z[i0 : i0 + step], spec)  # recomputed state
        grad_f = _sigma_backward(sigma_name, sigma, f, grad_r)
        kern.analysis(grad_f, gz[i0 : i0 + step])
    return gz


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


# --------------------------------------------------------------------------------------
# Generic structured operators (CSR or dense) and the dispatcher
# --------------------------------------------------------------------------------------
# The generic path works in "feature-major" layout, (features, N) instead of
# (N, features): a CSR sparse matrix times a contiguous dense matrix is the one
# sparse product that is fast on CPU (and cuSPARSE's native case on GPU).


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


def iat_fast(
    z: torch.Tensor, ops: StructuredIAT, sigma_name: str = "relu", sigma: Nonlinearity = torch.relu
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

    Returns:
        (..., m)
    """
    lead = z.shape[:-1]
    d, m = ops.P.shape[1], ops.Qw.shape[1]
    kern = ops.kernel_for(sigma_name)
    grad = torch.is_grad_enabled() and z.requires_grad
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
