"""Fused aLSTM: one autograd function over the whole sequence and every layer.

The wrap-around (layer 0 at step t reads the top layer's ``z`` of step t-1) forces
step-major processing, so the forward is a Python loop over (t, layer) that writes
into preallocated buffers, and the backward is a hand-written BPTT in the reverse
order.  What makes it faster than autograd through the per-step graph
(:func:`unbottleneck.adaptive.alstm.alstm_reference`):

* no per-step autograd nodes: each step is a handful of ops on views of
  sequence-long buffers, most of them in place;
* every weight gradient (W, V, Pi, the adaptation cell's weights and biases) is ONE
  GEMM over all T*B rows after the sequential pass has produced the per-step
  deltas, instead of T memory-bound rank-B accumulations into a (4H, H) matrix.  It
  is computed as ``(inputs^T deltas)^T`` (a transposed view is returned): MKL runs
  that orientation 20-30% faster for these shapes;
* the adaptation model reads ``[x ; h ; z_below ; z]`` from one buffer row, so its
  input and recurrent matmuls are a single GEMM; layer 0's ``x`` part (not
  recurrent) is hoisted out of the loop as one GEMM, in the forward and for the
  input gradient in the backward;
* every per-step (B, k) x (k, m) product -- forward AND backward -- uses weights
  pre-packed once per call for oneDNN (float32 CPU weights of at least
  ``settings.alstm_onednn_min_numel`` elements, where torch ships the ops); with 20 rows per
  product ``torch.mm`` (MKL) re-packs the weight on every call.  For the backward's
  transposed products packing costs a transposing copy and a reorder per call,
  which the loop repays (PTB sizes, 1 thread: 0.96 s of products + 0.08 s of
  packing against 1.14 s with ``torch.mm``).  Small epilogues ride on the GEMM: the
  adaptation bias / hoisted input part and, in the backward, the carried ``dz`` are
  oneDNN bias/binary post-ops, and the policy's sigmoid is an eltwise post-op;
* large ``tanh`` are evaluated as ``2 sigmoid(2u) - 1`` (torch's CPU ``tanh`` costs
  about 3x its ``sigmoid``, and oneDNN's tanh post-op is slower still); for the
  policy the factor 2 is folded into a scaled copy of ``Pi``;
* the backward forms the step-independent factors of the cell derivatives
  (:class:`_CellGrad`) in a few sequence-long ops first, so the sequential loop
  does about 20 small ops per layer and step;
* no page faults in steady state: the large buffers of a call (the activations
  saved for backward, the backward's scratch) are carved from one flat block per
  call, and blocks are recycled between calls by a small pool (``settings.alstm_cache_buffers``,
  :func:`clear_buffer_cache`).  Fresh multi-hundred-MB allocations are returned to
  the OS on free, and touching them again costs a page fault per 4 KiB page: with
  fresh buffers a training call at the PTB sizes took 0.9-1.6e5 minor faults, about
  0.2-0.35 s at ~2 us each.  A forward block goes back to the pool when its
  autograd graph is freed, a backward block when the backward returns; nothing
  returned to the caller is a view of a pooled block.

Memory: activations are saved, not recomputed: about ``T B (3n + 29H + 8K)`` floats
per layer from the forward, and about ``T B (n + 30H + 9K)`` of scratch in the
backward (PTB sizes, T = 70, B = 20, float32: 274 MiB saved, 271 MiB scratch; plus
the packed weights, two copies of the ~50 MiB of weights).  With caching on, up to
``_BufferPool.max_buffers`` such blocks stay allocated between calls (a training
loop keeps about three: two forward blocks in rotation, since the previous step's
graph is still referenced while the next forward runs, and one backward block);
:func:`clear_buffer_cache` releases them.

Layout of the per-layer buffer ``IN`` (T+1, B, D), D = n + H + 2K: row t holds
``[x_t | h_{t-1} | z_below_t | z_{t-1}]`` (dropped h and z: what step t reads); row T
holds the final ``h`` and ``z``.  Each step writes its h_t / z_t straight into row
t+1 and into the consumer layer's row, so the adaptation input is one (B, D) row and
the adaptation weight gradient one (T B, D)^T x (T B, 4K) GEMM.

Not supported: double backward (the backward is once-differentiable, so a second
differentiation raises), and ``torch.compile`` tracing (``implementation="auto"``
switches to the reference while compiling).  The saved buffers live on the autograd
context, so saved-tensor hooks (e.g. CPU offloading) do not see them.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .. import settings
from .._autocast import own_precision
from .alstm import ALSTMCellState, ALSTMMasks, ALSTMState

_PARAMS_PER_LAYER = 8  # adapt.weight_ih, adapt.weight_hh, adapt.bias_ih, adapt.bias_hh, Pi, W, V, b

# oneDNN packing, buffer recycling and the sigmoid-tanh threshold are knobs of
# :mod:`unbottleneck.settings` (alstm_use_onednn, alstm_onednn_min_numel,
# alstm_cache_buffers, alstm_tanh_via_sigmoid_min).
_onednn_ok: bool | None = None


def _onednn_available() -> bool:
    global _onednn_ok
    if _onednn_ok is None:
        try:
            w = torch.ones(3, 2)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 4)
            x = torch.ones(4, 2)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            s = torch.ops.mkldnn._linear_pointwise(x, packed, None, "sigmoid", [], "")
            a = torch.ops.mkldnn._linear_pointwise.binary(x, torch.ones(4, 3), packed, None, "add")
            _onednn_ok = bool(
                torch.allclose(y, torch.full((4, 3), 2.0))
                and torch.allclose(s, torch.full((4, 3), 2.0).sigmoid())
                and torch.allclose(a, torch.full((4, 3), 3.0))
            )
        except Exception:  # op missing in this build or unsupported CPU
            _onednn_ok = False
    return _onednn_ok


# -- buffer pool ---------------------------------------------------------------------------


class _BufferPool:
    """Free flat CPU buffers, recycled between calls to avoid re-faulting fresh pages.

    ``take`` returns the smallest free block of the right dtype holding at least
    ``numel`` and at most about ``1.5 numel`` elements (so a variable BPTT length still
    hits), or a fresh one; ``give`` returns a block; at most ``max_buffers`` are kept
    (oldest dropped first).  Thread-safe.  ``give`` may run inside a garbage-collector
    finalizer, i.e. in the middle of any other code including ``take``, so it only
    appends to a lock-free queue that the other methods drain under the lock.
    """

    def __init__(self, max_buffers: int = 4) -> None:
        self.max_buffers = max_buffers
        self._free: list[Tensor] = []
        self._returned: deque[Tensor] = deque()
        self._lock = threading.Lock()

    def _drain(self) -> None:  # with the lock held
        while self._returned:
            self._free.append(self._returned.popleft())
        del self._free[:-self.max_buffers]

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        if settings.get().alstm_cache_buffers and device.type == "cpu":
            with self._lock:
                self._drain()
                best = -1
                for i, b in enumerate(self._free):
                    if (b.dtype == dtype and numel <= b.numel() <= 1.5 * numel + 4096
                            and (best < 0 or b.numel() < self._free[best].numel())):
                        best = i
                if best >= 0:
                    return self._free.pop(best)
        return torch.empty(numel, dtype=dtype, device=device)

    def give(self, block: Tensor) -> None:
        if settings.get().alstm_cache_buffers and block.device.type == "cpu":
            self._returned.append(block)  # atomic; see the class doc

    def free_blocks(self) -> list[Tensor]:
        """The cached blocks (a new list)."""
        with self._lock:
            self._drain()
            return list(self._free)

    def clear(self) -> None:
        with self._lock:
            self._returned.clear()
            self._free.clear()

    def cached_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.free_blocks())


_POOL = _BufferPool()


def clear_buffer_cache() -> None:
    """Drop the recycled buffers of the fused aLSTM (see ``settings.alstm_cache_buffers``)."""
    _POOL.clear()


_ALIGN = 16  # elements: keep every carved view 64-byte aligned (float32)


def _carve(shapes: list[tuple[int, ...]], opts: dict) -> tuple[Tensor, list[Tensor]]:
    """One pooled block cut into contiguous views of the given shapes: (block, views)."""
    sizes = [-(-math.prod(s) // _ALIGN) * _ALIGN for s in shapes]
    block = _POOL.take(max(sum(sizes), 1), opts["dtype"], opts["device"])
    views, offset = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        views.append(block[offset:offset + math.prod(shape)].view(shape))
        offset += size
    return block, views


# -- per-step products -------------------------------------------------------------------


class _Gemm:
    """``a @ w.T (+ bias)`` for a weight ``w`` (m, k) fixed during one call; a: (B, k) -> (B, m).

    Packs ``w`` once for oneDNN when it is a float32 CPU tensor and the ops exist;
    otherwise (float64, other devices) calls ``torch.mm`` / ``torch.addmm`` on the
    transposed view.  ``w`` may be a transposed view (the backward's products): it is
    then copied to contiguous before packing.
    """

    def __init__(self, w: Tensor, batch: int, bias: Tensor | None = None) -> None:
        self.w_t = w.t()
        self.bias = bias
        self.packed = None
        knobs = settings.get()
        if (knobs.alstm_use_onednn and w.numel() >= knobs.alstm_onednn_min_numel and w.device.type == "cpu"
                and w.dtype == torch.float32 and _onednn_available()):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch)

    def __call__(self, a: Tensor) -> Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, self.bias, "none", [], "")
        if self.bias is not None:
            return torch.addmm(self.bias, a, self.w_t)
        return torch.mm(a, self.w_t)

    def add(self, a: Tensor, other: Tensor) -> Tensor:
        """``a @ w.T + other``, other (B, m) (any strides); the bias is not applied."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(a, other, self.packed, None, "add")
        return torch.addmm(other, a, self.w_t)

    def sigmoid(self, a: Tensor) -> Tensor:
        """``sigmoid(a @ w.T)`` (the bias is not applied)."""
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, None, "sigmoid", [], "")
        return torch.mm(a, self.w_t).sigmoid_()



# 0-dim: ``torch.add(_MINUS_ONE, s, alpha=2.0)`` is ``2 s - 1`` in one pass (a 0-dim
# tensor does not change the result dtype).
_MINUS_ONE = torch.tensor(-1.0, dtype=torch.float64)


def _tanh_into(src: Tensor, out: Tensor) -> Tensor:
    """``out = tanh(src)``, as ``2 sigmoid(2 src) - 1`` for large tensors on the CPU (where
    the sigmoid kernel is faster; on a GPU one tanh launch beats three)."""
    if src.device.type != "cpu" or src.numel() < settings.get().alstm_tanh_via_sigmoid_min:
        return torch.tanh(src, out=out)
    torch.mul(src, 2.0, out=out).sigmoid_()
    return torch.add(_MINUS_ONE, out, alpha=2.0, out=out)


def _activate(pre: Tensor, act: Tensor, size: int) -> None:
    """LSTM gate activations of pre (B, 4S) into act: sigmoid for i, f, o; tanh for g."""
    torch.sigmoid(pre, out=act)
    _tanh_into(pre[:, 2 * size:3 * size], act[:, 2 * size:3 * size])


def _cell_forward(act: Tensor, c_prev: Tensor, c: Tensor, tc: Tensor, h: Tensor, size: int) -> None:
    """``c = f c_prev + i g``, ``tc = tanh(c)``, ``h = o tc`` into the given buffers."""
    S = size
    torch.mul(act[:, S:2 * S], c_prev, out=c).addcmul_(act[:, :S], act[:, 2 * S:3 * S])
    _tanh_into(c, tc)
    torch.mul(tc, act[:, 3 * S:], out=h)


class _CellGrad:
    """Step-independent factors of the LSTM cell backward, computed for all steps at once.

    With ``c = f c_prev + i g`` and ``h = o tanh(c)`` (i, f, o sigmoids, g a tanh), the
    gradient w.r.t. the gate pre-activations is, per step,
    ``dc_tot = dc + dh * o (1 - tanh(c)^2)``,
    ``da = [dc_tot g i', dc_tot c_prev f', dc_tot i g', dh tanh(c) o']`` and
    ``dc_prev = dc_tot f``.  Every factor but ``dh`` / ``dc`` is known after the forward,
    so they are formed here in a few sequence-long ops and the sequential loop does
    four small ops per cell and step (:meth:`step`).

    Args:
        act: (T, B, 4S) activations [i, f, g, o]; c_prev: (T, B, S) cell states
        before each step; tc: (T, B, S) tanh of the cell states after each step;
        G: (T, B, 4S) and DTC: (T, B, S) buffers to fill.
    """

    def __init__(self, act: Tensor, c_prev: Tensor, tc: Tensor, size: int, G: Tensor,
                 DTC: Tensor) -> None:
        S = size
        i, f, g, o = act[..., :S], act[..., S:2 * S], act[..., 2 * S:3 * S], act[..., 3 * S:]
        self.S = S
        self.f = f
        # G = [g i', c_prev f', i g', tanh(c) o'] with s' = s - s^2 and g' = 1 - g^2
        torch.mul(i, i, out=G[..., :S]).neg_().add_(i).mul_(g)
        torch.mul(f, f, out=G[..., S:2 * S]).neg_().add_(f).mul_(c_prev)
        torch.mul(g, g, out=G[..., 2 * S:3 * S]).neg_().add_(1.0).mul_(i)
        torch.mul(o, o, out=G[..., 3 * S:]).neg_().add_(o).mul_(tc)
        self.G = G
        self.DTC = torch.mul(tc, tc, out=DTC).neg_().add_(1.0).mul_(o)  # o (1 - tanh(c)^2)

    def step(self, t: int, dh: Tensor, dc: Tensor, da: Tensor) -> Tensor:
        """Gate pre-activation gradient of step t into ``da`` (B, 4S); returns dc_prev."""
        S, G = self.S, self.G[t]
        B = dh.shape[0]
        dct = torch.addcmul(dc, self.DTC[t], dh)
        torch.mul(G[:, :3 * S].view(B, 3, S), dct.unsqueeze(1), out=da[:, :3 * S].view(B, 3, S))
        torch.mul(G[:, 3 * S:], dh, out=da[:, 3 * S:])
        return dct.mul_(self.f[t])


# -- the autograd function ---------------------------------------------------------------


@dataclass
class _Config:
    """Non-tensor arguments of the autograd function (masks need no gradient)."""

    sizes: tuple[tuple[int, int], ...]  # (n_l, H_l) per layer
    adapt_size: int
    masks: ALSTMMasks
    fix_policy: bool


class _Layer:
    """Per-layer sizes, weights and saved buffers of one call."""

    def __init__(self, n: int, H: int, K: int, params: tuple[Tensor, ...]) -> None:
        self.n, self.H, self.K = n, H, K
        self.D = n + H + 2 * K
        self.o = n + H  # offset of pi_u in the policy
        self.Pn = n + 13 * H  # policy width
        wa_ih, wa_hh, ba_ih, ba_hh, pi_w, w, v, b = params
        self.wa = torch.cat([wa_ih, wa_hh], dim=1)  # (4K, D): one GEMM for input + recurrence
        self.ba = ba_ih + ba_hh
        self.pi, self.w, self.v, self.b = pi_w, w, v, b

    def saved_shapes(self, T: int, B: int, fix: bool) -> list[tuple[int, ...]]:
        """Shapes of the forward buffers, in the order :meth:`bind` takes them."""
        H, K = self.H, self.K
        shapes = [(T + 1, B, self.D), (T + 1, B, H), (T, B, H), (T + 1, B, K), (T, B, K),
                  (T, B, 4 * K), (T, B, 4 * H), (T, B, 2, 4 * H)]
        return shapes if fix else shapes + [(T, B, self.Pn), (T, B, self.o)]

    def bind(self, views: list[Tensor], T: int, B: int, fix: bool, opts: dict) -> None:
        (self.IN, self.C, self.TC, self.ZC, self.TZC, self.AACT, self.GACT,
         self.G2) = views[:8]  # G2[t] = [W xs_t ; V hs_t], the gates' two products
        if fix:
            self.P = torch.ones(1, 1, self.Pn, **opts).expand(T, B, self.Pn)
            self.XH = self.IN[:T, :, :self.o]
        else:
            self.P = views[8]
            self.XH = views[9]  # [pi_x * x_t | pi_h * h_{t-1}], the inputs of W and V

    # slots of an IN row
    def x(self, t: int) -> Tensor:
        return self.IN[t, :, :self.n]

    def h(self, t: int) -> Tensor:
        return self.IN[t, :, self.n:self.n + self.H]

    def zb(self, t: int) -> Tensor:
        return self.IN[t, :, self.n + self.H:self.n + self.H + self.K]

    def z(self, t: int) -> Tensor:
        return self.IN[t, :, self.n + self.H + self.K:]


class _Saved:
    """The layers of one call, kept on the autograd context; its pooled block is given
    back when this object dies (i.e. when the graph is freed)."""

    __slots__ = ("layers", "__weakref__")

    def __init__(self, layers: list[_Layer], block: Tensor) -> None:
        self.layers = layers
        weakref.finalize(self, _POOL.give, block).atexit = False


def _layer_params(cell) -> list[Tensor]:
    a = cell.adapt
    return [a.weight_ih, a.weight_hh, a.bias_ih, a.bias_hh, cell.policy_weight(),
            cell.weight_ih, cell.weight_hh, cell.bias]


def alstm_fused(
    module, x: Tensor, state: ALSTMState, masks: ALSTMMasks, fix_policy: bool = False
) -> tuple[Tensor, ALSTMState]:
    """Fused forward of an :class:`~unbottleneck.adaptive.alstm.ALSTM`.

    Same contract as :func:`~unbottleneck.adaptive.alstm.alstm_reference`: x (T, B, n)
    time-major, per-layer (B, size) states, masks; returns (T, B, H_last) outputs
    (before dropout) and the final state.
    """
    L = len(module.layers)
    if x.shape[0] == 0:
        return x.new_zeros(0, x.shape[1], module.output_size), tuple(state)
    cfg = _Config(
        sizes=tuple((c.input_size, c.hidden_size) for c in module.layers),
        adapt_size=module.adapt_size,
        masks=masks,
        fix_policy=bool(fix_policy),
    )
    flat_state = [t for s in state for t in s]
    params = [p for cell in module.layers for p in _layer_params(cell)]
    outs = _ALSTMFunction.apply(cfg, x, *flat_state, *params)
    out, rest = outs[0], outs[1:]
    new_state = tuple(ALSTMCellState(*rest[4 * j:4 * j + 4]) for j in range(L))
    return out, new_state


@dataclass
class _Scratch:
    """The backward's scratch buffers, carved from one pooled block, by name.

    Per layer (``per_layer[j]``): ``da`` the adaptation pre-activation grads, ``dg`` the
    gate grads times [pi_u ; pi_v ; pi_b] (just the gate grads when the policy is fixed),
    ``dq`` the policy pre-activation grads, ``g``/``dtc`` and ``ga``/``dtca`` the main and
    adaptation cells' factors.  Shared: ``dxs0`` layer 0's d(pi_x * x) (its input grad is
    deferred), and per layer the per-step temporaries ``sq`` (pi^2) and ``dpre``.
    """

    per_layer: list[dict[str, Tensor]]
    dxs0: Tensor
    sq: list[Tensor]
    dpre: list[Tensor]

    @staticmethod
    def layout(layers: list, T: int, B: int, K: int, fix: bool) -> list[tuple[str, int, tuple[int, ...]]]:
        """(name, layer, shape) of every buffer, in carving order."""
        out = []
        for j, ly in enumerate(layers):
            out += [("da", j, (T, B, 4 * K)), ("dg", j, (T, B, 1 if fix else 3, 4 * ly.H)),
                    ("dq", j, (T, B, 1 if fix else ly.Pn)), ("g", j, (T, B, 4 * ly.H)),
                    ("dtc", j, (T, B, ly.H)), ("ga", j, (T, B, 4 * K)), ("dtca", j, (T, B, K))]
        out.append(("dxs0", 0, (T, B, layers[0].n)))
        out += [("sq", j, (B, ly.Pn)) for j, ly in enumerate(layers)]
        out += [("dpre", j, (B, 4 * ly.H)) for j, ly in enumerate(layers)]
        return out

    @classmethod
    def bind(cls, layout: list[tuple[str, int, tuple[int, ...]]], views: list[Tensor]) -> _Scratch:
        L = 1 + max(j for _, j, _ in layout)
        per_layer: list[dict[str, Tensor]] = [{} for _ in range(L)]
        shared: dict[str, dict[int, Tensor]] = {"dxs0": {}, "sq": {}, "dpre": {}}
        for (name, j, _), view in zip(layout, views, strict=True):
            if name in shared:
                shared[name][j] = view
            else:
                per_layer[j][name] = view
        return cls(per_layer, shared["dxs0"][0], [shared["sq"][j] for j in range(L)],
                   [shared["dpre"][j] for j in range(L)])


class _ALSTMFunction(torch.autograd.Function):
    """(cfg, x, *state (4L), *params (8L)) -> (out, *final state (4L))."""

    @staticmethod
    @own_precision
    def forward(ctx, cfg: _Config, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        L, K = len(cfg.sizes), cfg.adapt_size
        T, B = x.shape[0], x.shape[1]
        state, params = flat[:4 * L], flat[4 * L:]
        fix = cfg.fix_policy
        opts = {"device": x.device, "dtype": x.dtype}
        P8 = _PARAMS_PER_LAYER
        layers = [_Layer(n, H, K, params[P8 * j:P8 * j + P8]) for j, (n, H) in enumerate(cfg.sizes)]
        shapes = [ly.saved_shapes(T, B, fix) for ly in layers]
        block, views = _carve([s for sh in shapes for s in sh], opts)
        start = 0
        for ly, sh in zip(layers, shapes, strict=True):
            ly.bind(views[start:start + len(sh)], T, B, fix, opts)
            start += len(sh)
        saved = _Saved(layers, block)

        for j, ly in enumerate(layers):
            h0, c0, z0, zc0 = state[4 * j:4 * j + 4]
            ly.h(0).copy_(h0)
            ly.z(0).copy_(z0)
            ly.C[0] = c0
            ly.ZC[0] = zc0
        first, top = layers[0], layers[-1]
        first.zb(0).copy_(state[4 * (L - 1) + 2])  # wrap-around: the top layer's initial z
        n0 = first.n
        first.IN[:T, :, :n0] = x
        # layer 0's adaptation input part is not recurrent: one GEMM for all steps
        ax0 = torch.addmm(first.ba, x.reshape(T * B, n0), first.wa[:, :n0].t()).view(T, B, 4 * K)
        gemm_a = [_Gemm(ly.wa[:, n0:], B) if j == 0 else _Gemm(ly.wa, B, bias=ly.ba)
                  for j, ly in enumerate(layers)]
        gemm_p = [None if fix else _Gemm(2.0 * ly.pi, B) for ly in layers]  # 2 Pi: tanh via sigmoid
        gemm_w = [_Gemm(ly.w, B) for ly in layers]
        gemm_v = [_Gemm(ly.v, B) for ly in layers]
        out = torch.empty(T, B, top.H, **opts)  # returned: never from the pool
        h_scratch = [torch.empty(B, ly.H, **opts) for ly in layers]

        for t in range(T):
            for j, ly in enumerate(layers):
                n, H, o = ly.n, ly.H, ly.o
                row = ly.IN[t]
                # adaptation model: z_t from [x ; h_{t-1} ; z_below ; z_{t-1}]
                pre_a = gemm_a[0].add(row[:, n:], ax0[t]) if j == 0 else gemm_a[j](row)
                aact = ly.AACT[t]
                _activate(pre_a, aact, K)
                z = ly.z(t + 1)
                _cell_forward(aact, ly.ZC[t], ly.ZC[t + 1], ly.TZC[t], z, K)
                if cfg.masks.z[j] is not None:
                    z.mul_(cfg.masks.z[j])
                if j + 1 < L:  # z_below of the next layer at the same step
                    layers[j + 1].zb(t).copy_(z)
                else:  # wrap-around: layer 0's z_below at the next step
                    first.zb(t + 1).copy_(z)
                # policy pi = tanh(Pi z) = 2 sigmoid(2 Pi z) - 1 and the adapted gates
                P = ly.P[t]
                if not fix:
                    torch.add(_MINUS_ONE, gemm_p[j].sigmoid(z), alpha=2.0, out=P)
                xh = ly.XH[t]
                if not fix:
                    torch.mul(P[:, :o], row[:, :o], out=xh)
                g2 = ly.G2[t]
                g2[:, 0] = gemm_w[j](xh[:, :n])
                g2[:, 1] = gemm_v[j](xh[:, n:])
                pre = torch.mul(P[:, o:o + 4 * H], g2[:, 0])
                pre.addcmul_(P[:, o + 4 * H:o + 8 * H], g2[:, 1]).addcmul_(P[:, o + 8 * H:], ly.b)
                gact = ly.GACT[t]
                _activate(pre, gact, H)
                h = out[t] if j == L - 1 else h_scratch[j]
                _cell_forward(gact, ly.C[t], ly.C[t + 1], ly.TC[t], h, H)
                hd = ly.h(t + 1)
                if cfg.masks.h[j] is not None:
                    torch.mul(h, cfg.masks.h[j], out=hd)
                else:
                    hd.copy_(h)
                if j + 1 < L:
                    layers[j + 1].x(t).copy_(hd)

        finals = []
        for ly in layers:
            finals += [ly.h(T).clone(), ly.C[T].clone(), ly.z(T).clone(), ly.ZC[T].clone()]
        ctx.cfg = cfg
        ctx.saved = saved
        ctx.shape = (T, B)
        ctx.save_for_backward(*params)  # version-checked: in-place edits before backward raise
        return (out, *finals)

    @staticmethod
    @once_differentiable
    @own_precision
    def backward(ctx, dout: Tensor, *dfinal: Tensor) -> tuple[Tensor | None, ...]:
        cfg, layers = ctx.cfg, ctx.saved.layers
        ctx.saved_tensors  # noqa: B018 -- raises if a parameter was modified in place
        K, fix = cfg.adapt_size, cfg.fix_policy
        T, B = ctx.shape
        opts = {"device": dout.device, "dtype": dout.dtype}

        # scratch (nothing returned is a view of it; ctx.saved stays intact, so backward
        # may run again with retain_graph=True); see _Scratch for what each buffer holds
        layout = _Scratch.layout(layers, T, B, K, fix)
        block, views = _carve([shape for *_, shape in layout], opts)
        try:
            return _backward(ctx, _Scratch.bind(layout, views), dout, dfinal)
        finally:
            del views
            _POOL.give(block)


def _backward(ctx, scratch: _Scratch, dout: Tensor,
              dfinal: tuple[Tensor, ...]) -> tuple[Tensor | None, ...]:
    """Body of :meth:`_ALSTMFunction.backward` (split out so the scratch is always
    returned to the pool)."""
    cfg, layers = ctx.cfg, ctx.saved.layers
    L, K, fix = len(layers), cfg.adapt_size, cfg.fix_policy
    T, B = ctx.shape
    TB = T * B
    mh, mz = cfg.masks.h, cfg.masks.z
    n0 = layers[0].n
    DA, DG, DQ, cell_g, adapt_g = [], [], [], [], []
    for ly, buf in zip(layers, scratch.per_layer, strict=True):
        DA.append(buf["da"])
        DG.append(buf["dg"])
        DQ.append(buf["dq"])
        cell_g.append(_CellGrad(ly.GACT, ly.C[:T], ly.TC, ly.H, buf["g"], buf["dtc"]))
        adapt_g.append(_CellGrad(ly.AACT, ly.ZC[:T], ly.TZC, K, buf["ga"], buf["dtca"]))
    dxs0, sq, dpre_buf = scratch.dxs0, scratch.sq, scratch.dpre

    dH = [dfinal[4 * j].clone() for j in range(L)]
    dC = [dfinal[4 * j + 1].clone() for j in range(L)]
    dZ = [dfinal[4 * j + 2].clone() for j in range(L)]
    dZC = [dfinal[4 * j + 3].clone() for j in range(L)]
    # transposed products of the backward: d(input) = d(output) @ w
    gemm_a = [_Gemm((ly.wa[:, n0:] if j == 0 else ly.wa).t(), B) for j, ly in enumerate(layers)]
    gemm_p = [None if fix else _Gemm(ly.pi.t(), B) for ly in layers]
    gemm_w = [_Gemm(ly.w.t(), B) for ly in layers]
    gemm_v = [_Gemm(ly.v.t(), B) for ly in layers]

    for t in range(T - 1, -1, -1):
        for j in range(L - 1, -1, -1):
            ly = layers[j]
            n, H, o = ly.n, ly.H, ly.o
            row = ly.IN[t]
            x_t, h_prev = row[:, :n], row[:, n:o]
            P = ly.P[t]
            # main cell: gradient w.r.t. this step's h (before its dropout)
            if mh[j] is not None:
                dh = torch.addcmul(dout[t], dH[j], mh[j]) if j == L - 1 else dH[j] * mh[j]
            else:
                dh = dH[j] + dout[t] if j == L - 1 else dH[j]
            if fix:
                dpre = DG[j][t, :, 0]
                dC[j] = cell_g[j].step(t, dh, dC[j], dpre)
                dxs = gemm_w[j](dpre)
                dhs = gemm_v[j](dpre)
                dz = dZ[j]
            else:
                dpre = dpre_buf[j]
                dC[j] = cell_g[j].step(t, dh, dC[j], dpre)
                dg = DG[j][t]  # [d(W xs) ; d(V hs) ; d(b) per row] = dpre * [pi_u ; pi_v ; pi_b]
                torch.mul(dpre.unsqueeze(1), P[:, o:].view(B, 3, 4 * H), out=dg)
                dxs = gemm_w[j](dg[:, 0])  # d(pi_x * x)
                dhs = gemm_v[j](dg[:, 1])  # d(pi_h * h_prev)
                # policy: d(pi) = [dxs x, dhs h_prev, dpre W xs, dpre V hs, dpre b], then
                # through tanh: d(Pi z) = d(pi) (1 - pi^2)
                dq = DQ[j][t]
                torch.mul(dxs, x_t, out=dq[:, :n])
                torch.mul(dhs, h_prev, out=dq[:, n:o])
                torch.mul(dpre.unsqueeze(1), ly.G2[t], out=dq[:, o:o + 8 * H].view(B, 2, 4 * H))
                torch.mul(dpre, ly.b, out=dq[:, o + 8 * H:])
                dq.addcmul_(dq, torch.mul(P, P, out=sq[j]), value=-1.0)
                dz = gemm_p[j].add(dq, dZ[j])
            if mz[j] is not None:
                dz = dz * mz[j]
            # adaptation cell
            da = DA[j][t]
            dZC[j] = adapt_g[j].step(t, dz, dZC[j], da)
            din = gemm_a[j](da)  # (B, D) (layer 0: (B, D - n), the x part is deferred)
            off = -n if j == 0 else 0
            # distribute to the inputs of step (t, j); din is fresh, so views are safe
            dH[j] = torch.addcmul(din[:, n + off:o + off], dhs, P[:, n:o])
            dz_below = din[:, o + off:o + K + off]
            dZ[j] = din[:, o + K + off:]
            if j > 0:
                dZ[j - 1] += dz_below
                dH[j - 1].add_(din[:, :n]).addcmul_(dxs, P[:, :n])
            else:
                dZ[L - 1] += dz_below  # layer 0 read the top layer's z of step t-1
                dxs0[t] = dxs

    need = ctx.needs_input_grad  # (cfg, x, *state, *params)
    grads: list[Tensor | None] = []
    for j in range(L):
        grads += [dH[j], dC[j], dZ[j], dZC[j]]
    dx = None
    if need[1]:  # layer 0's input gradient, hoisted: pi_x * d(pi_x x) + adaptation's x part
        if not fix:
            dxs0.mul_(layers[0].P[:, :, :n0])
        dx = torch.addmm(dxs0.view(TB, n0), DA[0].view(TB, 4 * K),
                         layers[0].wa[:, :n0]).view(T, B, n0)

    # weight gradients: one GEMM each over all T*B rows, as (inputs^T deltas)^T
    pgrads: list[Tensor | None] = []
    for j, ly in enumerate(layers):
        n, H, o = ly.n, ly.H, ly.o
        base = 2 + 4 * L + _PARAMS_PER_LAYER * j
        IN = ly.IN
        dg_u = DG[j][:, :, 0].reshape(TB, 4 * H)
        dg_v = DG[j][:, :, 0 if fix else 1].reshape(TB, 4 * H)
        dwa = dba = dpi = dw = dv = db = None
        if need[base] or need[base + 1]:
            dwa = torch.mm(IN[:T].reshape(TB, ly.D).t(), DA[j].view(TB, 4 * K)).t()
        if need[base + 2] or need[base + 3]:
            dba = DA[j].view(TB, 4 * K).sum(0)
        if need[base + 4]:
            if fix:
                dpi = torch.zeros_like(ly.pi)
            else:
                z = IN[1:, :, n + H + K:].reshape(TB, K)
                dpi = torch.mm(z.t(), DQ[j].view(TB, ly.Pn)).t()
        if need[base + 5]:
            dw = torch.mm(ly.XH[:, :, :n].reshape(TB, n).t(), dg_u).t()
        if need[base + 6]:
            dv = torch.mm(ly.XH[:, :, n:].reshape(TB, H).t(), dg_v).t()
        if need[base + 7]:
            db = DG[j][:, :, 0 if fix else 2].sum((0, 1))
        pgrads += [
            dwa[:, :n + H + K] if dwa is not None else None,
            dwa[:, n + H + K:] if dwa is not None else None,
            dba, dba, dpi, dw, dv, db,
        ]
    return (None, dx, *grads, *pgrads)
