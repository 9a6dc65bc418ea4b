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
    hats, any quadrature).  In a feature-major layout the nodes are grouped by the
    interval between two hat centres, ``R`` slots per interval, so the state is a
    batched (intervals, R, 2) x (intervals, 2, N) product reading the input pairs
    ``(z_j, z_{j+1})`` through an overlapping view, and the output of hat j a
    (1, 2R) x (2R, N) product over a window of two consecutive intervals of the
    same buffer: no gathers, no scatters, O(N M) work instead of O(N M d).  The
    few nodes beyond R per interval (many for Gauss-Legendre) go to extra rows
    handled with gathers and ``index_add``.
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
processed in chunks of ``CHUNK_ELEMENTS`` (about one L2 cache), so the transient
memory is a few chunk buffers rather than (N, M) tensors, and backward writes
its result over the (d, N) gradient buffer it reads from.  ReLU and leaky ReLU
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
# Elements per chunk of the M-wide intermediates (1 MiB of float32, about one L2 cache):
# smaller chunks pay more per-op overhead, larger ones more transient memory.
CHUNK_ELEMENTS = 1 << 18
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


def _chunk(total: int, per_item: int) -> int:
    """How many of ``total`` items (``per_item`` elements each) one chunk takes."""
    return max(1, min(total, CHUNK_ELEMENTS // max(per_item, 1)))


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
    """``y = K^T v`` and its transpose ``g_v = K g_y`` (feature-major, dim 0).

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

    def forward_t(self, v: torch.Tensor) -> torch.Tensor:
        """(d, N) contiguous -> (d, N); overwrites ``v``."""
        if self.fwd is not None:
            return self.fwd.apply(v, torch.empty_like(v), v)
        return v if self.scale is None else v.mul_(self.scale[:, None])

    def backward_t(self, g: torch.Tensor) -> torch.Tensor:
        """(d, N), any strides (autograd's gradient: never written) -> contiguous (d, N)."""
        out = torch.empty(g.shape, dtype=g.dtype, device=g.device)
        if self.fwd is not None:
            return self.bwd.apply(g, out, torch.empty_like(out))
        if self.scale is None:
            return out.copy_(g)
        return torch.mul(g, self.scale[:, None], out=out)


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


@dataclass
class _BandPart:
    """Padded rows of nodes: row v holds up to R nodes of interval ``rows[v]``.

    ``A[v, slot]`` are the coefficients of ``(z_j, z_{j+1})`` (j = ``rows[v]``) in the
    state at that node and ``Qat[v, slot]`` those of the output side (``w`` and a
    diagonal K folded in); padding slots are zero, so they add nothing either way.
    """

    rows: torch.Tensor  # (V,) interval of each row
    A: torch.Tensor  # (V, R, 2)
    Qat: torch.Tensor  # (V, R, 2)
    identity: bool  # rows == arange(d - 1): read the pairs view directly

    def to(self, **kw) -> _BandPart:
        return _BandPart(
            self.rows.to(kw.get("device")), self.A.to(**kw), self.Qat.to(**kw), self.identity
        )


@dataclass
class _BandKernel:
    """Piecewise-linear kernel: nodes grouped by interval ``[c_j, c_{j+1}]``.

    ``main`` has exactly one row of ``R`` slots per interval (``R`` = the typical node
    count, e.g. 4 for M = 4d): its state ``f[j] = A[j] @ (z_j, z_{j+1})`` reads the
    feature-major input through an overlapping view, and hat j collects intervals
    j - 1 and j, two consecutive rows of one contiguous buffer, so
    ``v_j = Qc[j] @ window_j`` with a (2R, N) window: no gathers, no scatters.  The
    few nodes beyond R per interval (and all nodes of rules with crowded intervals
    such as Gauss-Legendre) form ``extra`` rows, handled by gathers and index_add.
    """

    d: int
    R: int
    main: _BandPart | None  # rows = arange(d - 1)
    Qc: torch.Tensor | None  # (d, 1, 2R) window form of main.Qat
    Ac: torch.Tensor | None  # (d, 1, 2R) window form of main.A
    extra: _BandPart | None
    out: _OutputMap
    name: str = "band"

    def to(self, **kw) -> _BandKernel:
        def cast(x):
            return None if x is None else x.to(**kw)

        return _BandKernel(
            self.d, self.R, cast(self.main), cast(self.Qc), cast(self.Ac), cast(self.extra),
            self.out.to(**kw),
        )

    def supports(self, sigma_name: str) -> bool:
        return True


def _pairs(x: torch.Tensor) -> torch.Tensor:
    """(d, N) contiguous -> (d - 1, 2, N) view with ``out[j] = x[j : j + 2]``."""
    return x.unfold(0, 2, 1).transpose(1, 2)


def _windows(buf: torch.Tensor, count: int) -> torch.Tensor:
    """(rows, R, N) contiguous -> (count, 2R, N) view with ``out[t] = buf[t : t + 2]``."""
    _, R, n = buf.shape
    return buf.as_strided((count, 2 * R, n), (R * n, n, 1), buf.storage_offset())


def _window_coefficients(C: torch.Tensor) -> torch.Tensor:
    """(J, R, 2) per-interval coefficients -> (J + 1, 1, 2R) per-centre window form."""
    J, R, _ = C.shape
    out = torch.zeros(J + 1, 1, 2 * R, dtype=C.dtype)
    out[1:, 0, :R] = C[:, :, 1]  # interval j - 1 reaches centre j through its right end
    out[:-1, 0, R:] = C[:, :, 0]  # interval j through its left end
    return out


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
    coef = torch.stack([P[k, interval], P[k, interval + 1]], 1)  # (M, 2)
    qcoef = w[:, None] * coef
    if out.scale is not None:  # fold a diagonal K into the output coefficients
        qcoef = qcoef * torch.stack([out.scale[interval], out.scale[interval + 1]], 1)
        out = _OutputMap()
    counts = torch.bincount(interval, minlength=J)
    order = torch.argsort(interval, stable=True)
    iv = interval[order]
    rank = torch.arange(M) - (torch.cumsum(counts, 0) - counts)[iv]
    # Main rows take the first R = floor(M / J) nodes of every interval (all of them
    # for uniform rules but a few); nodes beyond go to extra rows of R slots.
    R = M // J
    in_main = rank < R
    main = extra = None
    if R > 0:
        A = torch.zeros(J, R, 2, dtype=P.dtype)
        Qat = torch.zeros(J, R, 2, dtype=P.dtype)
        sel = order[in_main]
        A[iv[in_main], rank[in_main]] = coef[sel]
        Qat[iv[in_main], rank[in_main]] = qcoef[sel]
        main = _BandPart(torch.arange(J), A, Qat, True)
    if not bool(in_main.all()):
        Re = max(R, 1)
        sel = order[~in_main]
        e_iv, e_rank = iv[~in_main], rank[~in_main] - R
        e_counts = torch.bincount(e_iv, minlength=J)
        per = (e_counts + Re - 1) // Re
        row_of = (torch.cumsum(per, 0) - per)[e_iv] + e_rank // Re
        V = int(per.sum())
        A = torch.zeros(V, Re, 2, dtype=P.dtype)
        Qat = torch.zeros(V, Re, 2, dtype=P.dtype)
        A[row_of, e_rank % Re] = coef[sel]
        Qat[row_of, e_rank % Re] = qcoef[sel]
        extra = _BandPart(torch.repeat_interleave(torch.arange(J), per), A, Qat, False)
    kern = _BandKernel(
        d, R, main,
        None if main is None else _window_coefficients(main.Qat),
        None if main is None else _window_coefficients(main.A),
        extra, out,
    )
    # Probe against the dense maps (catches any slip in the layout and the folding).
    gen = torch.Generator().manual_seed(0)
    zt = torch.randn(d, 3, generator=gen, dtype=P.dtype)
    gt = torch.randn(d, 3, generator=gen, dtype=P.dtype)
    y = _band_forward(zt, kern, "tanh", torch.tanh)
    g = _band_backward(kern, zt, gt, "tanh", torch.tanh)
    y_ref = (torch.tanh(P @ zt).t() @ Qw).t()
    g_ref = P.t() @ ((1 - torch.tanh(P @ zt) ** 2) * (Qw @ gt))
    ok = float((y - y_ref).abs().max()) <= tol * float(Qw.abs().sum(0).max())
    ok = ok and float((g - g_ref).abs().max()) <= tol * float(
        (P.abs().t() @ (Qw.abs() @ gt.abs())).max()
    )
    return kern if ok else None


def _band_sweep(
    kern: _BandKernel,
    zt: torch.Tensor,
    fill: Callable[[_BandPart, torch.Tensor, int, int], None],
    use_q: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Chunk loop shared by forward and backward.

    ``fill(part, buf, v0, v1)`` writes rows v0..v1 of the padded M-wide tensor (the
    activated state, or the gradient w.r.t. the state) into ``buf``; the rows are then
    reduced onto the d centres with the output coefficients (``use_q``) or with P's,
    into ``out`` (d, N) (new if None).  Chunks go in increasing order of centres and
    write ``out[c0:c1]`` only after ``fill`` has read intervals up to ``c1``, so
    ``out`` may be the tensor ``fill`` reads from (the main part's rows), saving one
    (d, N) buffer.  Chunks hold about ``CHUNK_ELEMENTS`` elements.
    """
    n, d, R = zt.shape[1], kern.d, kern.R
    if out is None:
        out = zt.new_empty(d, n)
    if kern.main is not None:
        # Row t + 1 of buf is interval c0 + t; row 0 keeps the previous chunk's last
        # interval (zero before the first), so the window of centre c0 + t is buf[t:t+2].
        Cw = kern.Qc if use_q else kern.Ac
        step = _chunk(d, R * n)
        buf = zt.new_empty(min(step, d) + 1, R, n)
        buf[0].zero_()
        for c0 in range(0, d, step):
            c1 = min(c0 + step, d)
            i1 = min(c1, d - 1)  # the last centre has no interval of its own
            fill(kern.main, buf[1 : 1 + i1 - c0], c0, i1)
            if i1 < c1:
                buf[1 + i1 - c0 : 1 + c1 - c0].zero_()
            torch.bmm(Cw[c0:c1], _windows(buf, c1 - c0), out=out[c0:c1].unsqueeze(1))
            buf[0].copy_(buf[c1 - c0])
    else:
        out.zero_()
    part = kern.extra
    if part is not None:
        V, Re = part.A.shape[:2]
        step = _chunk(V, Re * n)
        buf = zt.new_empty(min(step, V), Re, n)
        C = part.Qat if use_q else part.A
        for v0 in range(0, V, step):
            v1 = min(v0 + step, V)
            chunk = buf[: v1 - v0]
            fill(part, chunk, v0, v1)
            u = torch.bmm(C[v0:v1].transpose(1, 2), chunk)
            out.index_add_(0, part.rows[v0:v1], u[:, 0])
            out.index_add_(0, part.rows[v0:v1] + 1, u[:, 1])
    return out


def _band_rows(
    part: _BandPart, C: torch.Tensor, pairs: torch.Tensor, v0: int, v1: int, out: torch.Tensor
) -> None:
    """``out = C[v0:v1] @ pairs[rows[v0:v1]]``: (rows, R, 2) x (rows, 2, N)."""
    if part.identity:
        src = pairs[v0:v1]
    else:
        src = pairs.index_select(0, part.rows[v0:v1])
    torch.bmm(C[v0:v1], src, out=out)


def _band_forward(
    zt: torch.Tensor, kern: _BandKernel, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Feature-major (d, N) contiguous -> (d, N)."""
    zp = _pairs(zt)

    def fill(part: _BandPart, buf: torch.Tensor, v0: int, v1: int) -> None:
        _band_rows(part, part.A, zp, v0, v1, buf)
        if sigma_name == "relu":
            buf.relu_()
        else:
            buf.copy_(sigma(buf))

    return kern.out.forward_t(_band_sweep(kern, zt, fill, use_q=True))


def _band_backward(
    kern: _BandKernel, zt: torch.Tensor, gyt: torch.Tensor, sigma_name: str, sigma: Nonlinearity
) -> torch.Tensor:
    """Gradient (d, N) w.r.t. the feature-major input; ``gyt`` (d, N) may be strided."""
    gv = kern.out.backward_t(gyt)  # a new tensor: the sweep overwrites it with the result
    zp, gp = _pairs(zt), _pairs(gv)
    # The extra rows run after the main sweep has overwritten gv: gather their pairs first
    # (a few rows for uniform rules).
    extra_gp = None if kern.extra is None else gp.index_select(0, kern.extra.rows)
    n = zt.shape[1]
    scratch: dict[int, torch.Tensor] = {}

    def fill(part: _BandPart, buf: torch.Tensor, v0: int, v1: int) -> None:
        src = gp[v0:v1] if part is kern.main else extra_gp[v0:v1]
        torch.bmm(part.Qat[v0:v1], src, out=buf)  # gradient w.r.t. sigma(f)
        key = id(part)
        if key not in scratch:
            scratch[key] = zt.new_empty(buf.shape[0], part.A.shape[1], n)
        f = scratch[key][: buf.shape[0]]
        _band_rows(part, part.A, zp, v0, v1, f)  # the state, recomputed
        grad_f = _sigma_backward(sigma_name, sigma, f, buf)
        if grad_f is not buf:
            buf.copy_(grad_f)

    return _band_sweep(kern, zt, fill, use_q=False, out=gv)


class _BandIAT(torch.autograd.Function):
    """Band kernel; saves only the (d, N) input and recomputes the state in backward."""

    @staticmethod
    def forward(ctx, zt, kern, sigma_name, sigma):  # type: ignore[override]
        ctx.save_for_backward(zt)
        ctx.kern, ctx.sigma_name, ctx.sigma = kern, sigma_name, sigma
        return _band_forward(zt, kern, sigma_name, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gyt):  # type: ignore[override]
        (zt,) = ctx.saved_tensors
        return _band_backward(ctx.kern, zt, gyt, ctx.sigma_name, ctx.sigma), None, None, None


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


class _FourierIAT(torch.autograd.Function):
    """Fourier kernel; saves only the input and recomputes the state in backward."""

    @staticmethod
    def forward(ctx, z, kern, sigma_name, sigma):  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.kern, ctx.sigma_name, ctx.sigma = kern, sigma_name, sigma
        return _fourier_forward(z, kern, sigma_name, sigma)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        kern: _FourierKernel = ctx.kern
        # gz overwrites gs chunk by chunk: each chunk of gs is read before it is written.
        gz = gs = gy * kern.out_scale
        n = z.shape[0]
        step = _chunk(n, 3 * kern.M)
        spec = kern.spectrum(min(step, n), z)
        for i0 in range(0, n, step):
            grad_r = kern.synthesis(gs[i0 : i0 + step], spec)
            f = kern.synthesis(z[i0 : i0 + step], spec)  # recomputed state
            grad_f = _sigma_backward(ctx.sigma_name, ctx.sigma, f, grad_r)
            kern.analysis(grad_f, gz[i0 : i0 + step])
        return gz, None, None, None


# --------------------------------------------------------------------------------------
# Generic structured operators (CSR or dense) and the dispatcher
# --------------------------------------------------------------------------------------
# The generic path works in "feature-major" layout, (features, N) instead of
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
    """Detect a structured kernel in float64, then cast it to P's dtype and device."""
    if P.dtype not in (torch.float32, torch.float64) or P.numel() == 0:
        return None  # half precision: the generic path (detection tolerances need fp32+)
    tol = _tol(P.dtype)
    P64 = P.detach().to("cpu", torch.float64)
    Q64 = Qw.detach().to("cpu", torch.float64)
    kern = _select_kernel(P64, Q64, tol)
    if kern is None and weights is not None:
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
    if isinstance(kern, _FourierKernel) and z.numel() > 0:  # batch-major
        z2 = z.reshape(-1, d).contiguous()
        fn = _FourierIAT.apply if grad else _fourier_forward
        return fn(z2, kern, sigma_name, sigma).reshape(*lead, m)
    zt = z.reshape(-1, d).t().contiguous()  # (d, N): the band and generic paths are feature-major
    if isinstance(kern, _BandKernel) and z.numel() > 0:
        yt = (_BandIAT.apply if grad else _band_forward)(zt, kern, sigma_name, sigma)
    elif grad:
        yt = _IATRecompute.apply(zt, ops, sigma_name, sigma)
    else:
        yt = _forward_t(ops, zt, sigma)
    # A transposed view: the next Linear's matmul reads it without a copy.
    return yt.t().reshape(*lead, m)
