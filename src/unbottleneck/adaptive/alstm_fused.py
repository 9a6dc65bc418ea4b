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
  deltas, instead of T memory-bound rank-B accumulations into a (4H, H) matrix;
* the adaptation model reads ``[x ; h ; z_below ; z]`` from one buffer row, so its
  input and recurrent matmuls are a single GEMM; layer 0's ``x`` part (not
  recurrent) is hoisted out of the loop as one GEMM, in the forward and for the
  input gradient in the backward;
* the forward's per-step (B, k) x (k, m) products use weights pre-packed once per
  call for oneDNN (float32 CPU weights of at least ``ONEDNN_MIN_NUMEL`` elements,
  where torch ships the ops; measured about 20-40% faster than ``torch.mm`` for
  these shapes); the backward's transposed products use ``torch.mm`` on the stored
  layout, which measured as fast without a transposing copy per call;
* large ``tanh`` are evaluated as ``2 sigmoid(2u) - 1`` (torch's CPU ``tanh`` costs
  about 3x its ``sigmoid``); for the policy the factor 2 is folded into a scaled
  copy of ``Pi``, so ``pi`` costs one product, one sigmoid and a rescale;
* the backward forms every step-independent factor of the cell derivatives
  (:class:`_CellGrad`) and ``1 - pi^2`` in a few sequence-long ops first, so the
  sequential loop does about 25 small ops per layer and step;
* activations are saved, not recomputed: about ``T B (2n + 28H + 8K)`` floats per
  layer from the forward, and about as much again of temporaries in the backward
  (PTB sizes, T = 70, B = 20, float32: about 270 MB saved, 700 MB peak).

Layout of the per-layer buffer ``IN`` (T+1, B, D), D = n + H + 2K: row t holds
``[x_t | h_{t-1} | z_below_t | z_{t-1}]`` (dropped h and z: what step t reads); row T
holds the final ``h`` and ``z``.  Each step writes its h_t / z_t straight into row
t+1 and into the consumer layer's row, so the adaptation input is one (B, D) row and
the adaptation weight gradient one (4K, T B) x (T B, D) GEMM.

Not supported: double backward (the backward is once-differentiable, so a second
differentiation raises), and ``torch.compile`` tracing (``implementation="auto"``
switches to the reference while compiling).  The saved buffers live on the autograd
context, so saved-tensor hooks (e.g. CPU offloading) do not see them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .alstm import ALSTMCellState, ALSTMMasks, ALSTMState

_PARAMS_PER_LAYER = 8  # adapt.weight_ih, adapt.weight_hh, adapt.bias_ih, adapt.bias_hh, Pi, W, V, b

#: Use oneDNN pre-packed weights for the forward per-step products where possible
#: (switch for tests and benchmarks), for weights of at least ONEDNN_MIN_NUMEL
#: elements (packing and dispatch cost more than they save on small matrices).
USE_ONEDNN = True
ONEDNN_MIN_NUMEL = 1 << 16
_onednn_ok: bool | None = None


def _onednn_available() -> bool:
    global _onednn_ok
    if _onednn_ok is None:
        try:
            w = torch.ones(3, 2)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 4)
            y = torch.ops.mkldnn._linear_pointwise(torch.ones(4, 2), packed, None, "none", [], "")
            _onednn_ok = bool(torch.allclose(y, torch.full((4, 3), 2.0)))
        except Exception:  # op missing in this build or unsupported CPU
            _onednn_ok = False
    return _onednn_ok


class _Gemm:
    """``a @ w.T`` for a weight ``w`` (m, k) fixed during one call; a: (B, k) -> (B, m).

    Packs ``w`` once for oneDNN when it is a float32 CPU tensor and the ops exist;
    otherwise (float64, other devices) calls ``torch.mm`` on the transposed view.
    """

    def __init__(self, w: Tensor, batch: int, pack: bool = True) -> None:
        self.w_t = w.t()
        self.packed = None
        if (pack and USE_ONEDNN and w.numel() >= ONEDNN_MIN_NUMEL and w.device.type == "cpu"
                and w.dtype == torch.float32 and _onednn_available()):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), batch)

    def __call__(self, a: Tensor) -> Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(a, self.packed, None, "none", [], "")
        return torch.mm(a, self.w_t)


# Below this many elements one torch.tanh call is cheaper than the four calls of the
# sigmoid form (per-call overhead dominates).
_TANH_VIA_SIGMOID_MIN = 8192


def _tanh_into(src: Tensor, out: Tensor) -> Tensor:
    """``out = tanh(src)``, as ``2 sigmoid(2 src) - 1`` for large tensors."""
    if src.numel() < _TANH_VIA_SIGMOID_MIN:
        return torch.tanh(src, out=out)
    torch.mul(src, 2.0, out=out)
    return out.sigmoid_().mul_(2.0).sub_(1.0)


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
        before each step; tc: (T, B, S) tanh of the cell states after each step.
    """

    def __init__(self, act: Tensor, c_prev: Tensor, tc: Tensor, size: int) -> None:
        S = size
        i, f, g, o = act[..., :S], act[..., S:2 * S], act[..., 2 * S:3 * S], act[..., 3 * S:]
        self.S = S
        self.f = f
        G = torch.empty_like(act)  # [g i', c_prev f', i g', tanh(c) o']
        torch.mul(i, i, out=G[..., :S]).neg_().add_(i).mul_(g)
        torch.mul(f, f, out=G[..., S:2 * S]).neg_().add_(f).mul_(c_prev)
        torch.mul(g, g, out=G[..., 2 * S:3 * S]).neg_().add_(1.0).mul_(i)
        torch.mul(o, o, out=G[..., 3 * S:]).neg_().add_(o).mul_(tc)
        self.G = G
        self.DTC = torch.mul(tc, tc).neg_().add_(1.0).mul_(o)  # o (1 - tanh(c)^2)

    def step(self, t: int, dh: Tensor, dc: Tensor, da: Tensor) -> Tensor:
        """Gate pre-activation gradient of step t into ``da`` (B, 4S); returns dc_prev."""
        S, G = self.S, self.G[t]
        B = dh.shape[0]
        dct = torch.addcmul(dc, self.DTC[t], dh)
        torch.mul(G[:, :3 * S].view(B, 3, S), dct.unsqueeze(1), out=da[:, :3 * S].view(B, 3, S))
        torch.mul(G[:, 3 * S:], dh, out=da[:, 3 * S:])
        return dct.mul_(self.f[t])


@dataclass
class _Config:
    """Non-tensor arguments of the autograd function (masks need no gradient)."""

    sizes: tuple[tuple[int, int], ...]  # (n_l, H_l) per layer
    adapt_size: int
    masks: ALSTMMasks
    fix_policy: bool


class _Layer:
    """Per-layer sizes, weights and saved buffers of one call."""

    def __init__(self, n: int, H: int, K: int, T: int, B: int, params: tuple[Tensor, ...],
                 fix: bool, opts: dict) -> None:
        self.n, self.H, self.K = n, H, K
        self.D = n + H + 2 * K
        self.o = n + H  # offset of pi_u in the policy
        wa_ih, wa_hh, ba_ih, ba_hh, pi_w, w, v, b = params
        self.wa = torch.cat([wa_ih, wa_hh], dim=1)  # (4K, D): one GEMM for input + recurrence
        self.ba = ba_ih + ba_hh
        self.pi, self.w, self.v, self.b = pi_w, w, v, b
        self.IN = torch.empty(T + 1, B, self.D, **opts)
        self.C = torch.empty(T + 1, B, H, **opts)
        self.TC = torch.empty(T, B, H, **opts)
        self.ZC = torch.empty(T + 1, B, K, **opts)
        self.TZC = torch.empty(T, B, K, **opts)
        self.AACT = torch.empty(T, B, 4 * K, **opts)
        self.GACT = torch.empty(T, B, 4 * H, **opts)
        self.GX: list[Tensor] = []
        self.GH: list[Tensor] = []
        P = n + 13 * H
        self.P = torch.ones(1, 1, P, **opts).expand(T, B, P) if fix else torch.empty(T, B, P, **opts)

    # slots of an IN row
    def x(self, t: int) -> Tensor:
        return self.IN[t, :, :self.n]

    def h(self, t: int) -> Tensor:
        return self.IN[t, :, self.n:self.n + self.H]

    def zb(self, t: int) -> Tensor:
        return self.IN[t, :, self.n + self.H:self.n + self.H + self.K]

    def z(self, t: int) -> Tensor:
        return self.IN[t, :, self.n + self.H + self.K:]


def _layer_params(cell) -> list[Tensor]:
    a = cell.adapt
    return [a.weight_ih, a.weight_hh, a.bias_ih, a.bias_hh, cell.policy.weight,
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


class _ALSTMFunction(torch.autograd.Function):
    """(cfg, x, *state (4L), *params (8L)) -> (out, *final state (4L))."""

    @staticmethod
    def forward(ctx, cfg: _Config, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        L, K = len(cfg.sizes), cfg.adapt_size
        T, B = x.shape[0], x.shape[1]
        state, params = flat[:4 * L], flat[4 * L:]
        fix = cfg.fix_policy
        opts = {"device": x.device, "dtype": x.dtype}
        P8 = _PARAMS_PER_LAYER
        layers = [_Layer(n, H, K, T, B, params[P8 * j:P8 * j + P8], fix, opts)
                  for j, (n, H) in enumerate(cfg.sizes)]
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
        gemm_a = [_Gemm(ly.wa[:, n0:] if j == 0 else ly.wa, B) for j, ly in enumerate(layers)]
        gemm_p = [None if fix else _Gemm(2.0 * ly.pi, B) for ly in layers]  # 2 Pi: tanh via sigmoid
        gemm_w = [_Gemm(ly.w, B) for ly in layers]
        gemm_v = [_Gemm(ly.v, B) for ly in layers]
        out = torch.empty(T, B, top.H, **opts)
        h_scratch = [torch.empty(B, ly.H, **opts) for ly in layers]

        for t in range(T):
            for j, ly in enumerate(layers):
                n, H, o = ly.n, ly.H, ly.o
                row = ly.IN[t]
                # adaptation model: z_t from [x ; h_{t-1} ; z_below ; z_{t-1}]
                if j == 0:
                    pre_a = gemm_a[0](row[:, n:]).add_(ax0[t])
                else:
                    pre_a = gemm_a[j](row).add_(ly.ba)
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
                    torch.sigmoid(gemm_p[j](z), out=P).mul_(2.0).sub_(1.0)
                gx = gemm_w[j](P[:, :n] * row[:, :n])
                gh = gemm_v[j](P[:, n:o] * row[:, n:o])
                ly.GX.append(gx)
                ly.GH.append(gh)
                pre = torch.mul(P[:, o:o + 4 * H], gx)
                pre.addcmul_(P[:, o + 4 * H:o + 8 * H], gh).addcmul_(P[:, o + 8 * H:], ly.b)
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
        ctx.layers = layers
        ctx.shape = (T, B)
        ctx.save_for_backward(*params)  # version-checked: in-place edits before backward raise
        return (out, *finals)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: Tensor, *dfinal: Tensor) -> tuple[Tensor | None, ...]:
        cfg, layers = ctx.cfg, ctx.layers
        ctx.saved_tensors  # noqa: B018 -- raises if a parameter was modified in place
        L, K = len(cfg.sizes), cfg.adapt_size
        T, B = ctx.shape
        fix = cfg.fix_policy
        opts = {"device": dout.device, "dtype": dout.dtype}
        mh, mz = cfg.masks.h, cfg.masks.z

        dH = [dfinal[4 * j].clone() for j in range(L)]
        dC = [dfinal[4 * j + 1].clone() for j in range(L)]
        dZ = [dfinal[4 * j + 2].clone() for j in range(L)]
        dZC = [dfinal[4 * j + 3].clone() for j in range(L)]
        first = layers[0]
        n0 = first.n
        DA, DPRE, DG, DQ = [], [], [], []
        cell_g, adapt_g, dtanh_p = [], [], []
        for ly in layers:
            DA.append(torch.empty(T, B, 4 * K, **opts))  # adaptation pre-activation grads
            DPRE.append(torch.empty(T, B, 4 * ly.H, **opts))  # gate pre-activation grads
            DG.append(torch.empty(T, B, 2, 4 * ly.H, **opts))  # grads of W xs and V hs
            DQ.append(None if fix else torch.empty(T, B, ly.n + 13 * ly.H, **opts))
            # sequence-long factors (ctx.layers stays intact: backward may run again
            # with retain_graph=True)
            cell_g.append(_CellGrad(ly.GACT, ly.C[:T], ly.TC, ly.H))
            adapt_g.append(_CellGrad(ly.AACT, ly.ZC[:T], ly.TZC, K))
            dtanh_p.append(None if fix else torch.mul(ly.P, ly.P).neg_().add_(1.0))
        # transposed products of the backward: d(input) = d(output) @ w
        # (plain torch.mm on the stored layout: measured as fast as oneDNN for these shapes,
        # and packing transposed weights would cost a transposing copy per call)
        gemm_a = [_Gemm((ly.wa[:, n0:] if j == 0 else ly.wa).t(), B, pack=False)
                  for j, ly in enumerate(layers)]
        gemm_p = [None if fix else _Gemm(ly.pi.t(), B, pack=False) for ly in layers]
        gemm_w = [_Gemm(ly.w.t(), B, pack=False) for ly in layers]
        gemm_v = [_Gemm(ly.v.t(), B, pack=False) for ly in layers]
        dxs0 = torch.empty(T, B, n0, **opts)  # layer 0's d(pi_x * x); its input grad is deferred

        for t in range(T - 1, -1, -1):
            for j in range(L - 1, -1, -1):
                ly = layers[j]
                n, H, o = ly.n, ly.H, ly.o
                row = ly.IN[t]
                x_t, h_prev = row[:, :n], row[:, n:o]
                P = ly.P[t]
                # main cell
                dh = dH[j] * mh[j] if mh[j] is not None else dH[j]
                if j == L - 1:
                    dh = dh + dout[t]
                dpre = DPRE[j][t]
                dC[j] = cell_g[j].step(t, dh, dC[j], dpre)
                dg = DG[j][t]  # [d(W xs) ; d(V hs)] = dpre * [pi_u ; pi_v]
                torch.mul(dpre.unsqueeze(1), P[:, o:o + 8 * H].view(B, 2, 4 * H), out=dg)
                dxs = gemm_w[j](dg[:, 0])  # d(pi_x * x)
                dhs = gemm_v[j](dg[:, 1])  # d(pi_h * h_prev)
                # policy
                if fix:
                    dz = dZ[j]
                else:
                    dq = DQ[j][t]
                    torch.mul(dxs, x_t, out=dq[:, :n])
                    torch.mul(dhs, h_prev, out=dq[:, n:o])
                    torch.mul(dpre, ly.GX[t], out=dq[:, o:o + 4 * H])
                    torch.mul(dpre, ly.GH[t], out=dq[:, o + 4 * H:o + 8 * H])
                    torch.mul(dpre, ly.b, out=dq[:, o + 8 * H:])
                    dq.mul_(dtanh_p[j][t])  # through tanh
                    dz = gemm_p[j](dq).add_(dZ[j])
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
                    dH[j - 1] += torch.addcmul(din[:, :n], dxs, P[:, :n])
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
                dxs0.mul_(first.P[:, :, :n0])
            dx = torch.addmm(dxs0.view(T * B, n0), DA[0].view(T * B, 4 * K),
                             first.wa[:, :n0]).view(T, B, n0)

        TB = T * B
        pgrads: list[Tensor | None] = []
        for j, ly in enumerate(layers):
            n, H, o = ly.n, ly.H, ly.o
            base = 2 + 4 * L + _PARAMS_PER_LAYER * j
            IN, P = ly.IN, ly.P
            da = DA[j].view(TB, 4 * K)
            dwa = dba = dpi = dw = dv = db = None
            if need[base] or need[base + 1]:
                dwa = torch.mm(da.t(), IN[:T].reshape(TB, ly.D))
            if need[base + 2] or need[base + 3]:
                dba = da.sum(0)
            if need[base + 4]:
                if fix:
                    dpi = torch.zeros_like(ly.pi)
                else:
                    dpi = torch.mm(DQ[j].view(TB, -1).t(), IN[1:, :, n + H + K:].reshape(TB, K))
            if need[base + 5]:
                xs = IN[:T, :, :n] if fix else P[:, :, :n] * IN[:T, :, :n]
                dw = torch.mm(DG[j][:, :, 0].reshape(TB, 4 * H).t(), xs.reshape(TB, n))
            if need[base + 6]:
                hs = IN[:T, :, n:o] if fix else P[:, :, n:o] * IN[:T, :, n:o]
                dv = torch.mm(DG[j][:, :, 1].reshape(TB, 4 * H).t(), hs.reshape(TB, H))
            if need[base + 7]:
                dpre = DPRE[j].view(TB, 4 * H)
                db = dpre.sum(0) if fix else (dpre * P[:, :, o + 8 * H:].reshape(TB, 4 * H)).sum(0)
            pgrads += [
                dwa[:, :n + H + K] if dwa is not None else None,
                dwa[:, n + H + K:] if dwa is not None else None,
                dba, dba, dpi, dw, dv, db,
            ]
        return (None, dx, *grads, *pgrads)
