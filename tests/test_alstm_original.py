"""``policy_layout="original"``: the published aLSTM code's as-run policy split, and its state dicts."""

import pytest
import torch
from torch import nn

from unbottleneck.adaptive import ALSTM
from unbottleneck.adaptive.alstm_original import convert_original_state_dict, policy_slices

F64 = torch.float64


def as_run_step(cell, x, h, c, zh, zc, z_below, z_mask=None, h_mask=None):
    """The as-run equations written out: pi_x = P[0:n], pi_h = P[n:n+H], pi_u = P[H:5H],
    pi_v = P[4H:8H], pi_b = P[4H:8H] of P = tanh(Pi z)."""
    n, H = cell.input_size, cell.hidden_size
    zh, zc = cell.adapt(torch.cat([x, h, z_below], -1), (zh, zc))
    if z_mask is not None:
        zh = zh * z_mask
    P = torch.tanh(zh @ cell.policy.weight.t())
    pi_x, pi_h = P[:, 0:n], P[:, n:n + H]
    pi_u, pi_v, pi_b = P[:, H:5 * H], P[:, 4 * H:8 * H], P[:, 4 * H:8 * H]
    a = pi_u * ((pi_x * x) @ cell.weight_ih.t()) + pi_v * ((pi_h * h) @ cell.weight_hh.t()) + pi_b * cell.bias
    i, f, g, o = a.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_raw = torch.sigmoid(o) * torch.tanh(c)
    return h_raw, (h_raw if h_mask is None else h_raw * h_mask), c, zh, zc


def as_run_stack(m, x, masks):
    T, B = x.shape[:2]
    st = [[x.new_zeros(B, s) for s in (cell.hidden_size, cell.hidden_size, m.adapt_size, m.adapt_size)]
          for cell in m.layers]
    outs = []
    for t in range(T):
        inp = x[t]
        for j, cell in enumerate(m.layers):
            zb = st[-1][2] if j == 0 else st[j - 1][2]
            h_raw, h, c, zh, zc = as_run_step(cell, inp, *st[j], zb, masks.z[j], masks.h[j])
            st[j] = [h, c, zh, zc]
            inp = h
        outs.append(h_raw)
    return torch.stack(outs)


@pytest.mark.parametrize("n,H", [(5, 3), (3, 4), (12, 2)])  # n < H, n > H, n > 5H
def test_original_layout_reference_equals_the_as_run_equations(n, H):
    torch.manual_seed(0)
    m = ALSTM(n, H, 3, num_layers=2, policy_layout="original", implementation="reference",
              dropout_hidden=0.3, dropout_adapt=0.2, dtype=F64)
    x = torch.randn(5, 2, n, dtype=F64, requires_grad=True)
    masks = m.sample_masks(2)
    out, _ = m(x, masks=masks)
    ref = as_run_stack(m, x, masks)
    assert torch.allclose(out, ref, atol=1e-13)
    w = torch.randn_like(out)
    params = [x, *m.parameters()]
    g1 = torch.autograd.grad((out * w).sum(), params, allow_unused=True)
    g2 = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_original_layout_differs_from_contiguous_and_pi_b_equals_pi_v():
    assert policy_slices(5, 3, "original") == [(0, 5), (5, 3), (3, 12), (12, 12), (12, 12)]
    assert policy_slices(5, 3, "contiguous") == [(0, 5), (5, 3), (8, 12), (20, 12), (32, 12)]
    torch.manual_seed(0)
    a = ALSTM(5, 3, 2, policy_layout="original", dtype=F64).eval()
    b = ALSTM(5, 3, 2, dtype=F64).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 2, 5, dtype=F64)
    assert not torch.allclose(a(x)[0], b(x)[0])
    pi = torch.randn(2, 5 + 13 * 3, dtype=F64)
    parts = a.layers[0].split_policy(pi)
    assert torch.equal(parts[3], parts[4])


def test_original_layout_fused_equals_reference_with_gradcheck():
    torch.manual_seed(1)
    m = ALSTM(4, 3, 2, num_layers=2, output_size=2, policy_layout="original",
              dropout_hidden=0.2, dropout_adapt=0.2, dtype=F64)
    x = torch.randn(4, 3, 4, dtype=F64, requires_grad=True)
    masks = m.sample_masks(3)
    outs, grads = [], []
    for impl in ("reference", "fused"):
        m.implementation = impl
        out, state = m(x, masks=masks)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum() + \
            sum(t.sum() for s in state for t in s)
        outs.append(out)
        grads.append(torch.autograd.grad(loss, [x, *m.parameters()]))
    assert torch.allclose(outs[0], outs[1], atol=1e-13)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    m.implementation = "fused"
    assert torch.autograd.gradcheck(lambda xx: m(xx, masks=masks)[0], (x[:2],), atol=1e-8)


def original_style_state_dict(n, H, K, L, prefix="", seed=0):
    """What the original aLSTM module's state_dict holds, built by hand from its structure."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for layer in range(L):
        ninp = n if layer == 0 else H
        ain = ninp + H + (K if L > 1 else 0)
        p = f"{prefix}adapt_layers.{layer}."
        sd[p + "weight_ih"] = torch.randn(4 * K, ain, generator=g, dtype=F64)
        sd[p + "weight_hh"] = torch.randn(4 * K, K, generator=g, dtype=F64)
        sd[p + "bias_ih"] = torch.randn(4 * K, generator=g, dtype=F64)
        sd[p + "bias_hh"] = torch.randn(4 * K, generator=g, dtype=F64)
        sd[f"{prefix}project_layers.{layer}.linear.weight"] = 0.3 * torch.randn(ninp + 13 * H, K, generator=g,
                                                                                 dtype=F64)
        p = f"{prefix}alstm_layers.{layer}."
        sd[p + "weight_ih"] = 0.3 * torch.randn(4 * H, ninp, generator=g, dtype=F64)
        sd[p + "weight_hh"] = 0.3 * torch.randn(4 * H, H, generator=g, dtype=F64)
        sd[p + "bias"] = torch.randn(4 * H, generator=g, dtype=F64)
    return sd


def test_loader_maps_every_tensor_of_an_original_state_dict():
    sd = original_style_state_dict(5, 4, 3, 2, prefix="rnns.")
    sd["encoder.weight"] = torch.zeros(10, 5, dtype=F64)  # the LM's other keys are ignored
    m = ALSTM(5, 4, 3, num_layers=2, policy_layout="original", dtype=F64)
    m.load_original_state_dict(sd)
    c0, c1 = m.layers
    assert torch.equal(c0.adapt.weight_ih, sd["rnns.adapt_layers.0.weight_ih"])
    assert torch.equal(c1.adapt.bias_hh, sd["rnns.adapt_layers.1.bias_hh"])
    assert torch.equal(c0.policy.weight, sd["rnns.project_layers.0.linear.weight"])
    assert torch.equal(c1.weight_ih, sd["rnns.alstm_layers.1.weight_ih"])
    assert torch.equal(c1.weight_hh, sd["rnns.alstm_layers.1.weight_hh"])
    assert torch.equal(c0.bias, sd["rnns.alstm_layers.0.bias"])
    # and the loaded module computes the as-run function
    x = torch.randn(3, 2, 5, dtype=F64)
    m.eval()
    none = m.sample_masks(2)._replace(h=(None, None), z=(None, None))
    assert torch.allclose(m(x)[0], as_run_stack(m, x, none), atol=1e-13)


def test_loader_pads_a_single_original_layer_without_changing_its_function():
    sd = original_style_state_dict(4, 3, 2, 1)
    m = ALSTM(4, 3, 2, policy_layout="original", dtype=F64).eval()
    m.load_original_state_dict(sd)
    w = m.layers[0].adapt.weight_ih
    assert torch.equal(w[:, :7], sd["adapt_layers.0.weight_ih"]) and not w[:, 7:].any()
    # the original one-layer cell: its adaptation LSTMCell reads [x ; h] only
    adapt = nn.LSTMCell(7, 2, dtype=F64)
    adapt.load_state_dict({k.removeprefix("adapt_layers.0."): v for k, v in sd.items()
                           if k.startswith("adapt_layers.0.")})
    cell = m.layers[0]
    x = torch.randn(3, 2, 4, dtype=F64)
    h = c = torch.zeros(2, 3, dtype=F64)
    zh = zc = torch.zeros(2, 2, dtype=F64)
    outs = []
    with torch.no_grad():
        for t in range(3):
            zh, zc = adapt(torch.cat([x[t], h], -1), (zh, zc))
            P = torch.tanh(zh @ sd["project_layers.0.linear.weight"].t())
            a = P[:, 3:15] * ((P[:, :4] * x[t]) @ cell.weight_ih.t()) + \
                P[:, 12:24] * ((P[:, 4:7] * h) @ cell.weight_hh.t()) + P[:, 12:24] * cell.bias
            i, f, g, o = a.chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        assert torch.allclose(m(x)[0], torch.stack(outs), atol=1e-13)


def test_loader_errors_are_clear():
    sd = original_style_state_dict(5, 4, 3, 2)
    with pytest.raises(ValueError, match="policy_layout='original'"):
        ALSTM(5, 4, 3, num_layers=2, dtype=F64).load_original_state_dict(sd)
    with pytest.raises(ValueError, match="holds 2 layers"):
        convert_original_state_dict(sd, num_layers=3)
    with pytest.raises(ValueError, match="no original aLSTM keys"):
        convert_original_state_dict({"encoder.weight": torch.zeros(2)})
    no_bias = {k: v for k, v in sd.items() if k != "alstm_layers.1.bias"}
    with pytest.raises(ValueError, match="bias-free original"):
        convert_original_state_dict(no_bias)
    bad = dict(sd)
    bad["project_layers.0.linear.weight"] = torch.zeros(5 + 9 * 4, 3)
    with pytest.raises(ValueError, match="projection shape"):
        convert_original_state_dict(bad)
    with pytest.raises(ValueError, match="unknown policy_layout|policy_layout must be"):
        ALSTM(5, 4, 3, policy_layout="shuffled")
