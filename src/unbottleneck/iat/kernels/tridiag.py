"""The output side of the structured kernels: ``Qw = diag(w) P K`` with K diagonal or the
inverse of a tridiagonal T (the dual of the hat functions), applied by scans along features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
