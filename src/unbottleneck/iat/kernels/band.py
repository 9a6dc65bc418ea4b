"""Kernel ``band``: two neighbouring basis functions per node (piecewise-linear hats).

Forward and backward loop over the R node slots of an interval, each an element-wise
op on (rows, intervals) arrays; see :class:`_BandPart`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ... import settings
from .common import _HOMOGENEOUS, Nonlinearity, _apply_sigma, _chunk, _sigma_backward
from .tridiag import _output_map, _OutputMap


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
        sigma = torch.tanh if name == "tanh" else torch.relu
        y = _band_forward(z, kern, name, sigma)
        g = _band_backward(kern, z, gy, name, sigma)
        if float((y - y_ref).abs().max()) > y_bound or float((g - g_ref).abs().max()) > g_bound:
            return None
    return kern


def _band_buffers(part: _BandPart, z: torch.Tensor, count: int) -> tuple[int, list, torch.Tensor | None]:
    """Rows per chunk, ``count`` (rows, V) work buffers, and the scratch of extra rows;
    all of them together hold about ``settings.iat_band_chunk_elements``."""
    V = part.A.shape[2]
    step = _chunk(z.shape[0], (count + (not part.identity)) * V, settings.get().iat_band_chunk_elements,
                  z.device.type)
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
        step = _chunk(n, kern.d, settings.get().iat_band_chunk_elements, y.device.type)
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
