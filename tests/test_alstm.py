"""Tests of the adaptive LSTM: reference cell, fused sequence function, module behaviour."""

import pytest
import torch
from torch import nn

import unbottleneck.adaptive.alstm_fused as fused_mod
from unbottleneck import settings
from unbottleneck.adaptive import ALSTM, ALSTMCell, ALSTMCellState, ALSTMMasks
from unbottleneck.adaptive.alstm import _Z0
from unbottleneck.settings import Settings

F64 = torch.float64


def make(L=2, n=5, H=6, K=3, out=4, seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("dtype", F64)
    return ALSTM(n, H, K, L, output_size=out, **kw)


def random_state(m, B, requires_grad=True):
    g = torch.Generator().manual_seed(123)
    return tuple(
        ALSTMCellState(*(
            (0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype)).requires_grad_(requires_grad)
            for t in s
        ))
        for s in m.init_state(B)
    )


def flat(state):
    return [t for s in state for t in s]


def loss_of(out, state):
    """A loss touching the output and every final state tensor with fixed random weights."""
    g = torch.Generator().manual_seed(7)
    total = (out * torch.randn(out.shape, generator=g, dtype=F64).to(out.dtype)).sum()
    for t in flat(state):
        total = total + (t * torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)).sum()
    return total


def run_grads(m, impl, x, state=None, masks=None, fix_policy=False):
    m.implementation = impl
    inputs = [x] + ([] if state is None else flat(state)) + list(m.parameters())
    out, new = m(x, state, masks=masks, fix_policy=fix_policy)
    grads = torch.autograd.grad(loss_of(out, new), inputs, allow_unused=True)
    grads = [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, grads, strict=True)]
    return out, new, grads


def assert_close_all(a, b, **tol):
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, **tol)


# -- parameter counts ------------------------------------------------------------------


@pytest.fixture
def no_init(monkeypatch):
    """Skip the (orthogonal) initialisation: parameter counting does not need values."""
    monkeypatch.setattr(ALSTMCell, "reset_parameters", lambda self: None)


@pytest.mark.parametrize(
    ("hidden", "vocab", "expected"), [(1150, 10000, 17_197_800), (1500, 33278, 32_133_678)]
)
def test_exact_parameter_counts(no_init, hidden, vocab, expected):
    m = ALSTM(400, hidden, adapt_size=100, num_layers=2, output_size=400)
    count = sum(p.numel() for p in m.parameters())
    # the LM wrapper adds a V x 400 embedding (tied decoder) and a V decoder bias
    assert count + vocab * 400 + vocab == expected


def test_parameter_layout():
    m = make(L=2, n=5, H=6, K=3, out=4)
    c0, c1 = m.layers
    assert (c0.input_size, c0.hidden_size, c1.input_size, c1.hidden_size) == (5, 6, 6, 4)
    assert c0.adapt.input_size == 5 + 6 + 3 and c0.adapt.hidden_size == 3
    assert c0.adapt.bias_ih is not None and c0.adapt.bias_hh is not None
    assert c0.policy.bias is None and c0.policy.weight.shape == (5 + 13 * 6, 3)
    assert c1.weight_ih.shape == (16, 6) and c1.weight_hh.shape == (16, 4) and c1.bias.shape == (16,)


# -- init ----------------------------------------------------------------------------


def test_init_weights_and_bias():
    cell = ALSTMCell(5, 6, 3, dtype=F64)
    for w in (cell.weight_ih, cell.weight_hh):
        for block in w.split(6):  # per gate: orthonormal columns (or rows if wide)
            gram = block.T @ block if block.shape[0] >= block.shape[1] else block @ block.T
            torch.testing.assert_close(gram, torch.eye(gram.shape[0], dtype=F64))
    expected = torch.zeros(24, dtype=F64)
    expected[6:12] = 1.0
    assert torch.equal(cell.bias, expected)
    whole = ALSTMCell(5, 6, 3, dtype=F64, weight_init="orthogonal")
    torch.testing.assert_close(whole.weight_ih.T @ whole.weight_ih, torch.eye(5, dtype=F64))


def test_policy_init_is_not_dead():
    """At init |pi| must be O(1) (default), while torch's default init leaves it ~0."""
    x = torch.empty(20, 4, 16).uniform_(-0.1, 0.1)
    stats = {}
    for policy_init in ("lstm", "zero_mean", "torch"):
        torch.manual_seed(0)
        m = ALSTM(16, 24, 8, 2, policy_init=policy_init).eval()
        pis, zs = [], []

        def record(mod, inp, out, pis=pis, zs=zs):
            pis.append(torch.tanh(out))
            zs.append(inp[0])

        hook = m.layers[0].policy.register_forward_hook(record)
        m.implementation = "reference"
        with torch.no_grad():
            m(x)
        hook.remove()
        stats[policy_init] = (torch.stack(pis[5:]).abs().mean().item(), torch.stack(zs[5:]).mean().item())
    assert stats["lstm"][0] > 0.6
    assert abs(stats["lstm"][1] - _Z0) < 0.1  # the adaptation state settles near z0
    assert stats["zero_mean"][0] > 0.3
    assert stats["torch"][0] < 0.15


# -- equivalence with nn.LSTM when the policies are fixed to 1 -------------------------


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("L", [1, 2])
def test_fixed_policy_equals_nn_lstm(impl, L):
    m = make(L=L, n=5, H=6, K=3, out=4 if L > 1 else None, implementation=impl)
    lstms = []
    for cell in m.layers:
        lstm = nn.LSTM(cell.input_size, cell.hidden_size, dtype=F64)
        with torch.no_grad():
            lstm.weight_ih_l0.copy_(cell.weight_ih)
            lstm.weight_hh_l0.copy_(cell.weight_hh)
            lstm.bias_ih_l0.copy_(cell.bias)
            lstm.bias_hh_l0.zero_()
        lstms.append(lstm)
    x = torch.randn(7, 3, 5, dtype=F64)
    state = random_state(m, 3, requires_grad=False)
    out, new = m(x, state, fix_policy=True)
    y = x
    for lstm, s, s_new in zip(lstms, state, new, strict=True):
        y, (h, c) = lstm(y, (s.h[None], s.c[None]))
        torch.testing.assert_close(s_new.h, h[0])
        torch.testing.assert_close(s_new.c, c[0])
    torch.testing.assert_close(out, y)


def test_cell_fixed_policy_equals_lstm_cell():
    torch.manual_seed(1)
    cell = ALSTMCell(4, 5, 2, dtype=F64)
    ref = nn.LSTMCell(4, 5, dtype=F64)
    with torch.no_grad():
        ref.weight_ih.copy_(cell.weight_ih)
        ref.weight_hh.copy_(cell.weight_hh)
        ref.bias_ih.copy_(cell.bias)
        ref.bias_hh.zero_()
    x = torch.randn(3, 4, dtype=F64)
    s = ALSTMCellState(*(torch.randn(3, k, dtype=F64) for k in (5, 5, 2, 2)))
    new = cell(x, s, torch.randn(3, 2, dtype=F64), fix_policy=True)
    h, c = ref(x, (s.h, s.c))
    torch.testing.assert_close(new.h, h)
    torch.testing.assert_close(new.c, c)
    adaptive = cell(x, s, torch.randn(3, 2, dtype=F64))
    assert not torch.allclose(adaptive.h, h)  # the policy does change the map


# -- fused == reference -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("L", "out", "batch_first", "dropout", "fix"),
    [
        (1, None, False, False, False),
        (2, 4, False, True, False),
        (3, 4, True, True, False),
        (2, None, True, False, True),
    ],
)
def test_fused_matches_reference(L, out, batch_first, dropout, fix):
    # L == 3 also covers the sigmoid form of tanh used for large tensors
    with settings.override(alstm_tanh_via_sigmoid_min=1 if L == 3 else Settings().alstm_tanh_via_sigmoid_min):
        _fused_matches_reference(L, out, batch_first, dropout, fix)


def _fused_matches_reference(L, out, batch_first, dropout, fix):
    m = make(L=L, out=out, batch_first=batch_first, dropout_hidden=0.3, dropout_adapt=0.4).train()
    B, T = 3, 6
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), dtype=F64, requires_grad=True)
    state = random_state(m, B)
    masks = m.sample_masks(B) if dropout else ALSTMMasks((None,) * L, (None,) * L)
    if dropout:
        assert all(mk is not None for mk in masks.h + masks.z)
    o_ref, s_ref, g_ref = run_grads(m, "reference", x, state, masks, fix)
    o_fus, s_fus, g_fus = run_grads(m, "fused", x, state, masks, fix)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(o_fus, o_ref, **tol)
    assert_close_all(flat(s_fus), flat(s_ref), **tol)
    assert_close_all(g_fus, g_ref, **tol)
    assert all(g.abs().sum() > 0 for g in g_ref[: 1 + 4 * L])  # input and state grads are live


def test_fused_float32_matches_float64_reference(monkeypatch):
    """float32 fused path (oneDNN-packed products where available, and plain mm)."""
    m64 = make(L=2, n=16, H=24, K=8, out=12, dropout_hidden=0.2, dropout_adapt=0.2).train()
    x = torch.randn(9, 4, 16, dtype=F64)
    masks = m64.sample_masks(4)
    o_ref, _, g_ref = run_grads(m64, "reference", x.clone().requires_grad_(), masks=masks)
    m32 = ALSTM(16, 24, 8, 2, output_size=12).train()
    m32.load_state_dict(m64.state_dict())
    masks32 = ALSTMMasks(*(tuple(t.float() for t in e) for e in masks))
    for onednn in (True, False):  # min_numel 1: pack even these small weights
        with settings.override(alstm_onednn_min_numel=1, alstm_use_onednn=onednn):
            o, _, g = run_grads(m32, "fused", x.float().requires_grad_(), masks=masks32)
        torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-5)
        for a, b in zip(g, g_ref, strict=True):
            scale = b.abs().max().clamp_min(1e-6)
            assert (a.double() - b).abs().max() / scale < 1e-4


def test_gradcheck_cell():
    """Full (every Jacobian entry) gradcheck of one reference step, masks included."""
    torch.manual_seed(0)
    cell = ALSTMCell(3, 4, 2, dtype=F64)
    names = [n for n, _ in cell.named_parameters()]
    x = torch.randn(2, 3, dtype=F64, requires_grad=True)
    z_below = torch.randn(2, 2, dtype=F64, requires_grad=True)
    state = [torch.randn(2, k, dtype=F64, requires_grad=True) for k in (4, 4, 2, 2)]
    h_mask = torch.tensor([[2.0, 0, 2, 2], [0, 2, 2, 2]], dtype=F64)
    z_mask = torch.tensor([[2.0, 0], [2, 2]], dtype=F64)

    def fn(x, z_below, *rest):
        ps = dict(zip(names, rest[4:], strict=True))
        kw = {"h_mask": h_mask, "z_mask": z_mask}
        new = torch.func.functional_call(cell, ps, (x, ALSTMCellState(*rest[:4]), z_below), kw)
        return tuple(new)

    inputs = (x, z_below, *state, *cell.parameters())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_gradcheck(impl):
    """Whole sequences, 2 layers (wrap-around), dropout, carried state; fast mode
    (random projections of the Jacobian) to stay quick -- the float64 equivalence
    test above compares every gradient entry of the two implementations."""
    m = make(L=2, n=3, H=4, K=2, out=3, dropout_hidden=0.3, dropout_adapt=0.3, implementation=impl)
    m.train()
    masks = m.sample_masks(2)
    x = torch.randn(3, 2, 3, dtype=F64, requires_grad=True)
    state = random_state(m, 2)
    params = list(m.parameters())
    names = [n for n, _ in m.named_parameters()]

    def fn(x, *rest):
        st = tuple(ALSTMCellState(*rest[4 * i:4 * i + 4]) for i in range(2))
        ps = dict(zip(names, rest[8:], strict=True))
        out, new = torch.func.functional_call(m, ps, (x, st), {"masks": masks})
        return (out, *flat(new))

    assert torch.autograd.gradcheck(
        fn, (x, *flat(state), *params), eps=1e-6, atol=1e-7, fast_mode=True
    )


# -- recycled buffers (fused path) -------------------------------------------------------


@pytest.fixture
def fresh_pool(monkeypatch):
    pool = fused_mod._BufferPool()
    monkeypatch.setattr(fused_mod, "_POOL", pool)
    return pool


def test_buffer_pool_no_stale_reads_no_aliasing(fresh_pool):
    """Recycled blocks are filled with NaN before reuse: results must not change (no
    read before write), two graphs alive at once must not share a block, and nothing
    returned (outputs, states, gradients) may be overwritten by later calls."""
    m = make(L=2, implementation="fused", dropout_hidden=0.2, dropout_adapt=0.2).train()
    masks = m.sample_masks(3)
    params = list(m.parameters())
    xs = [torch.randn(7, 3, 5, dtype=F64, requires_grad=True) for _ in range(2)]
    states = [random_state(m, 3), random_state(m, 3)]

    def grads_of(out, new, x, state):
        return torch.autograd.grad(loss_of(out, new), [x, *flat(state), *params])

    expected = [run_grads(m, "reference", x, s, masks) for x, s in zip(xs, states, strict=True)]
    m.implementation = "fused"
    for _ in range(3):
        for block in fresh_pool.free_blocks():
            block.fill_(float("nan"))
        runs = [m(x, s, masks=masks) for x, s in zip(xs, states, strict=True)]  # both alive
        grads = [grads_of(*r, x, s) for r, x, s in zip(runs[::-1], xs[::-1], states[::-1],
                                                         strict=True)][::-1]
        outs = [(r[0].clone(), [t.clone() for t in flat(r[1])]) for r in runs]
        kept = [[g.clone() for g in gs] for gs in grads]
        m(xs[0], states[0], masks=masks)[0].sum().backward()  # more calls reuse the blocks
        for (out, new), (o_ref, s_ref, g_ref), gs, (o_snap, s_snap), k in zip(
                runs, expected, grads, outs, kept, strict=True):
            torch.testing.assert_close(out, o_ref, rtol=1e-10, atol=1e-12)
            assert_close_all(flat(new), flat(s_ref), rtol=1e-10, atol=1e-12)
            assert_close_all(list(gs), g_ref, rtol=1e-10, atol=1e-12)
            assert_close_all([out, *flat(new), *gs], [o_snap, *s_snap, *k], rtol=0, atol=0)
        del runs, grads
    assert len(fresh_pool.free_blocks()) >= 2  # forward and backward blocks came back


def test_buffer_pool_lifecycle(fresh_pool, monkeypatch):
    m = make(L=2, implementation="fused").train()
    x = torch.randn(6, 2, 5, dtype=F64, requires_grad=True)
    out, state = m(x)
    assert fresh_pool.free_blocks() == []  # the forward block is held by the graph
    out.sum().backward()
    assert len(fresh_pool.free_blocks()) == 1  # the backward's scratch is back, the graph still alive
    del out, state
    assert len(fresh_pool.free_blocks()) == 2  # the graph is freed: so is its forward block
    cached = {b.data_ptr() for b in fresh_pool.free_blocks()}
    out, state = m(x[:5])  # a shorter sequence fits a recycled block
    assert len(fresh_pool.free_blocks()) == 1 and fresh_pool.free_blocks()[0].data_ptr() in cached
    del out, state
    assert len(fresh_pool.free_blocks()) == 2
    with torch.no_grad():
        m(x)  # no graph: the block comes back at once
    assert {b.data_ptr() for b in fresh_pool.free_blocks()} == cached
    with fresh_pool._lock:  # as a GC finalizer running inside take() would: must not block
        fresh_pool.give(torch.empty(10, dtype=F64))
    assert any(b.numel() == 10 for b in fresh_pool.free_blocks())
    fused_mod.clear_buffer_cache()
    assert fresh_pool.free_blocks() == [] and fresh_pool.cached_bytes() == 0
    with settings.override(alstm_cache_buffers=False):
        m(x)[0].sum().backward()
    assert fresh_pool.free_blocks() == []
    # .grad accumulation of the (transposed-view) weight gradients
    m.zero_grad()
    m(x)[0].sum().backward()
    first = [p.grad.clone() for p in m.parameters()]
    m(x)[0].sum().backward()
    assert_close_all([p.grad for p in m.parameters()], [2 * g for g in first])


# -- state handling ----------------------------------------------------------------------


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_segments_equal_one_run(impl):
    m = make(L=2, implementation=impl, dropout_hidden=0.2, dropout_adapt=0.2).train()
    masks = m.sample_masks(3)
    x = torch.randn(8, 3, 5, dtype=F64)
    state = random_state(m, 3, requires_grad=False)
    full, s_full = m(x, state, masks=masks)
    a, s_a = m(x[:3], state, masks=masks)
    b, s_b = m(x[3:], s_a, masks=masks)
    torch.testing.assert_close(torch.cat([a, b]), full)
    assert_close_all(flat(s_b), flat(s_full))


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_carried_state_gradient_and_detach(impl):
    m = make(L=2, implementation=impl)
    x1 = torch.randn(4, 2, 5, dtype=F64, requires_grad=True)
    x2 = torch.randn(4, 2, 5, dtype=F64)
    _, s1 = m(x1)
    out, _ = m(x2, s1)
    (g,) = torch.autograd.grad(out.sum(), x1)  # the carried state links the segments
    assert g.abs().sum() > 0
    detached = ALSTM.detach_state(s1)
    assert all(not t.requires_grad for t in flat(detached))
    assert_close_all(flat(detached), [t.detach() for t in flat(s1)])
    out, _ = m(x2, detached)
    out.sum().backward()
    assert x1.grad is None  # the graph is cut


def test_initial_state_and_empty_sequence():
    m = make(L=2)
    s = m.init_state(3)
    assert [tuple(t.shape) for t in s[1]] == [(3, 4), (3, 4), (3, 3), (3, 3)]
    assert all(t.abs().sum() == 0 for t in flat(s))
    x = torch.randn(5, 3, 5, dtype=F64)
    assert_close_all(flat(m(x)[1]), flat(m(x, s)[1]))
    for impl in ("reference", "fused"):
        m.implementation = impl
        out, new = m(x[:0], s)
        assert out.shape == (0, 3, 4)
        assert_close_all(flat(new), flat(s))


def test_unbatched_input_matches_batch_of_one():
    m = make(L=2)
    x = torch.randn(5, 5, dtype=F64)
    out, s = m(x)
    out1, s1 = m(x[:, None])
    torch.testing.assert_close(out, out1[:, 0])
    assert s[0].h.shape == (6,)
    out2, _ = m(x, s)  # unbatched state is accepted back
    assert out2.shape == (5, 4)


def test_wraparound_top_z_feeds_layer0():
    """Changing only the top layer's initial z changes layer 0 (through z_below)."""
    m = make(L=2)
    x = torch.randn(1, 2, 5, dtype=F64)
    s = m.init_state(2)
    s2 = (s[0], s[1]._replace(z_h=torch.ones(2, 3, dtype=F64)))
    for impl in ("reference", "fused"):
        m.implementation = impl
        a, b = m(x, s)[1], m(x, s2)[1]
        assert not torch.allclose(a[0].z_h, b[0].z_h)


# -- module behaviour ------------------------------------------------------------------


def test_dropout_train_eval_and_masks():
    m = make(L=2, dropout_hidden=0.5, dropout_adapt=0.5)
    x = torch.randn(5, 4, 5, dtype=F64)
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0])  # deterministic in eval
    no_drop = m(x)[0]
    m.train()
    torch.manual_seed(0)
    a = m(x)[0]
    b = m(x)[0]
    assert not torch.allclose(a, b)  # fresh masks per call
    masks = m.sample_masks(4)
    torch.testing.assert_close(m(x, masks=masks)[0], m(x, masks=masks)[0])
    m.eval()
    assert not torch.allclose(m(x, masks=masks)[0], no_drop)  # explicit masks apply in eval too
    ones = ALSTMMasks(*(tuple(torch.ones_like(t) for t in e) for e in masks))
    torch.testing.assert_close(m(x, masks=ones)[0], no_drop)
    # variational: one mask per sequence, values 0 or 1 / (1 - p)
    mk = masks.h[0]
    assert mk.shape == (4, 6) and set(mk.unique().tolist()) <= {0.0, 2.0}
    assert ALSTM(5, 6, 3).sample_masks(2).h == (None,)


def test_state_dict_roundtrip_and_dtype():
    m = make(L=2, dtype=torch.float32)
    m2 = ALSTM(5, 6, 3, 2, output_size=4)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(4, 2, 5)
    torch.testing.assert_close(m(x)[0], m2(x)[0], rtol=0, atol=0)
    m64 = m.to(F64)
    out, s = m64(x.double())
    assert out.dtype == F64 and all(t.dtype == F64 for t in flat(s))
    with pytest.raises(TypeError, match="dtype"):
        m64(x)


def test_backward_twice_with_retain_graph():
    m = make(L=2, implementation="fused")
    x = torch.randn(4, 2, 5, dtype=F64, requires_grad=True)
    out, _ = m(x)
    loss = out.pow(2).sum()
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_double_backward():
    m = make(L=1)
    x = torch.randn(3, 2, 5, dtype=F64, requires_grad=True)
    m.implementation = "reference"
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    g.sum().backward()  # the reference supports it
    m.implementation = "fused"
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate"):
        g.sum().backward()


def test_auto_uses_reference_while_compiling(monkeypatch):
    m = make(L=1)
    assert m._use_fused()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not m._use_fused()
    m.implementation = "fused"
    assert m._use_fused()


def test_in_place_parameter_change_before_backward_raises():
    m = make(L=1, implementation="fused")
    out, _ = m(torch.randn(3, 2, 5, dtype=F64, requires_grad=True))
    with torch.no_grad():
        m.layers[0].weight_hh.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 0}, "input_size"),
        ({"hidden_size": 2.5}, "hidden_size"),
        ({"adapt_size": -1}, "adapt_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"output_size": 0}, "output_size"),
        ({"dropout_hidden": 1.0}, "dropout_hidden"),
        ({"dropout_adapt": -0.1}, "dropout_adapt"),
        ({"implementation": "cuda"}, "implementation"),
        ({"weight_init": "xavier"}, "weight_init"),
        ({"policy_init": "ones"}, "policy_init"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {"input_size": 5, "hidden_size": 6, "adapt_size": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        ALSTM(**args)


def test_bad_inputs_and_states():
    m = make(L=2)
    with pytest.raises(ValueError, match="input_size=5"):
        m(torch.randn(4, 2, 6, dtype=F64))
    with pytest.raises(ValueError, match="input"):
        m(torch.randn(4, 2, 3, 5, dtype=F64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m([[1.0] * 5])
    x = torch.randn(4, 2, 5, dtype=F64)
    with pytest.raises(ValueError, match="2 per-layer"):
        m(x, m.init_state(2)[:1])
    bad = list(m.init_state(2))
    bad[1] = bad[1]._replace(c=torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="layer 1 c"):
        m(x, tuple(bad))
    with pytest.raises(ValueError, match=r"expected shape \(2, 6\)"):
        m(x, m.init_state(3))
    with pytest.raises(TypeError, match="float32"):
        m(x, ALSTM(5, 6, 3, 2, output_size=4).init_state(2))
    with pytest.raises(ValueError, match=r"masks.h\[0\]"):
        m(x, masks=ALSTMMasks((torch.ones(3, 6, dtype=F64), None), (None, None)))
    with pytest.raises(ValueError, match="2 entries"):
        m(x, masks=ALSTMMasks((None,), (None, None)))
    with pytest.raises(TypeError, match="ALSTMMasks"):
        m(x, masks=(None, None))
    with pytest.raises(ValueError, match="ALSTMCell expects x"):
        m.layers[0](torch.randn(2, 4, dtype=F64))
