"""TransformerLM and its FFN variants."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from unbottleneck import IAT, AdaptiveLinear, make_adaptive, swap_activations
from unbottleneck.diagnostics import BottleneckRecorder
from unbottleneck.models import FFN_VARIANTS, TransformerLM, multiply_adds

VARIANTS = list(FFN_VARIANTS)
SMALL = {"vocab_size": 23, "d_model": 32, "n_layers": 2, "n_heads": 4, "max_len": 16}


def _model(ffn: str, seed: int = 0, **kw) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(**{**SMALL, **kw}, ffn=ffn)


@pytest.mark.parametrize("ffn", VARIANTS)
def test_causal_masking(ffn):
    """Changing the tokens after position t leaves the outputs up to t unchanged."""
    model = _model(ffn).eval()
    x = torch.randint(0, 23, (3, 12), generator=torch.Generator().manual_seed(1))
    y = model(x)
    for t in (0, 5, 10):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randint(0, 23, (3, 11 - t), generator=torch.Generator().manual_seed(t))
        y2 = model(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:])


@pytest.mark.parametrize("match", ["params", "flops"])
def test_variants_match_the_mlp_within_one_percent(match):
    models = {f: _model(f, d_model=64, match=match) for f in VARIANTS}
    if match == "params":
        counts = {f: m.ffn_parameters() for f, m in models.items()}
        totals = {f: m.num_parameters() for f, m in models.items()}
        assert max(totals.values()) / min(totals.values()) - 1 <= 0.01
    else:
        counts = {f: sum(multiply_adds(b.ffn) for b in m.blocks) for f, m in models.items()}
    assert max(counts.values()) / min(counts.values()) - 1 <= 0.01, counts
    assert models["swiglu"].ffn_width < models["mlp"].ffn_width  # three matrices instead of two


def test_multiply_add_and_flop_counts():
    """Counted by hand for the mlp variant: per block 4 d^2 (qkv + out) + 2 T d (scores and
    values over the full T x T matrix) + 2 d d_ff (the FFN), plus d V for the decoder."""
    m = _model("mlp")
    d, T, V, ff, L = 32, 16, 23, 128, 2
    macs = L * (4 * d * d + 2 * T * d + 2 * d * ff) + d * V
    assert m.multiply_adds_per_token() == macs
    assert m.flops_per_token() == 2 * macs and m.flops_per_token(training=True) == 6 * macs
    assert m.multiply_adds_per_token(8) == macs - L * 2 * 8 * d


@pytest.mark.parametrize("ffn", VARIANTS)
def test_every_variant_trains_a_few_steps_with_finite_loss(ffn):
    model = _model(ffn, dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 23, (4, 16), generator=torch.Generator().manual_seed(2))
    losses = []
    for _ in range(8):
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 23), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("ffn", VARIANTS)
def test_state_dict_round_trip(ffn):
    a, b = _model(ffn, seed=0).eval(), _model(ffn, seed=1).eval()
    x = torch.randint(0, 23, (2, 9))
    assert not torch.allclose(a(x), b(x))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf))
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("ffn", VARIANTS)
def test_meta_init_then_to_empty_and_reset(ffn):
    """Every tensor is rewritten (to_empty leaves garbage, here NaN on purpose): the same
    model as one built on the CPU, up to the random draws."""
    with torch.device("meta"):
        m = TransformerLM(**SMALL, ffn=ffn)
    m.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*m.parameters(), *m.buffers()]:
            t.fill_(float("nan"))
    m.reset_parameters()
    real = _model(ffn)
    for (name, a), b in zip(m.state_dict().items(), real.state_dict().values(), strict=True):
        assert torch.isfinite(a).all(), name
        if name.endswith(("ln1.weight", "ln2.bias", "act.P", "act.Qw")):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.isfinite(m(torch.randint(0, 23, (2, 5)))).all()


@pytest.mark.parametrize("ffn,backend", [("iat", "inductor"), ("mlp", "aot_eager"), ("swiglu", "aot_eager"),
                                         ("adaptive", "aot_eager")])
def test_torch_compile_of_the_model(ffn, backend):
    torch._dynamo.reset()
    model = _model(ffn)
    x = torch.randint(0, 23, (2, 10))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, model(x), rtol=1e-4, atol=1e-5)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    torch._dynamo.reset()


@pytest.mark.parametrize("ffn", ["mlp", "iat"])
def test_torch_export_of_the_model(ffn):
    model = _model(ffn).eval()
    x = torch.randint(0, 23, (2, 10))
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ffn,expected", [
    ("mlp", {"blocks.{i}.ffn.act": "activation"}),
    ("swiglu", {"blocks.{i}.ffn:silu": "activation"}),
    ("iat", {"blocks.{i}.ffn.act": "iat"}),
    ("adaptive", {"blocks.{i}.ffn.act": "activation", "blocks.{i}.ffn.up": "adaptive"}),
])
def test_the_recorder_finds_every_ffn_nonlinearity(ffn, expected):
    model = _model(ffn, n_layers=3)
    with BottleneckRecorder(model) as rec:
        model(torch.randint(0, 23, (2, 7)))
    want = {k.format(i=i): v for i in range(3) for k, v in expected.items()}
    assert {n: r.kind for n, r in rec.records.items()} == want
    for r in rec.records.values():
        assert r.seen > 0 and torch.isfinite(r.effect).all()


def test_swap_activations_and_make_adaptive_on_the_transformer():
    model = _model("mlp").eval()
    x = torch.randint(0, 23, (2, 8))
    y = model(x)
    model, swapped = swap_activations(model, x, activations=(nn.GELU,))
    assert swapped == ["blocks.0.ffn.act", "blocks.1.ffn.act"]
    assert all(isinstance(b.ffn.act, IAT) and b.ffn.act.in_features == model.ffn_width for b in model.blocks)
    assert torch.isfinite(model(x)).all()

    model = _model("mlp").eval()
    model, converted = make_adaptive(model, policy="sva", include=lambda n, m: n.endswith("ffn.up"))
    assert converted == ["blocks.0.ffn.up", "blocks.1.ffn.up"]
    assert all(isinstance(b.ffn.up, AdaptiveLinear) for b in model.blocks)
    # the static map was kept: with every policy at 1 the model is the one before
    for b in model.blocks:
        b.ffn.up.forward = b.ffn.up.linearized
    torch.testing.assert_close(model(x), y, rtol=1e-4, atol=1e-5)
    # converting "every Linear" never touches the tied decoder (it is not a module)
    everything = _model("mlp")
    make_adaptive(everything, policy="output")
    assert everything.head is None and torch.isfinite(everything(x)).all()


@pytest.mark.parametrize("bad,error,match", [
    (torch.randn(2, 4), TypeError, "integer token ids"),
    (torch.zeros(8, dtype=torch.long), ValueError, r"shape \(batch, seq_len\)"),
    (torch.zeros(1, 17, dtype=torch.long), ValueError, "exceeds max_len=16"),
    (torch.full((1, 3), 23), ValueError, r"token ids must be in \[0, 23\)"),
])
def test_bad_input_is_refused_clearly(bad, error, match):
    with pytest.raises(error, match=match):
        _model("mlp")(bad)


@pytest.mark.parametrize("kw,match", [
    ({"ffn": "moe"}, "unknown ffn 'moe'"),
    ({"match": "bytes"}, "unknown match"),
    ({"n_heads": 5}, "divisible by n_heads"),
    ({"ffn": "mlp", "basis": "fourier"}, "takes only activation="),
    ({"ffn": "swiglu", "basis": "fourier"}, "takes no options"),
    ({"ffn": "mlp", "activation": "tanh"}, "unknown activation 'tanh'"),
    ({"ffn": "adaptive", "policy": "output"}, "policy 'sva' or 'io'"),
])
def test_bad_configs_are_refused(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TransformerLM(**{**SMALL, **kw})


def test_transformer_ffn_presets_and_schedule():
    from unbottleneck.experiments.transformer_ffn import TransformerFFNConfig, lr_factor, windows

    gpu = TransformerFFNConfig(preset="gpt-gpu", steps=1000)
    assert gpu.d_model == 384 and gpu.device == "cuda" and gpu.steps == 1000  # an explicit value wins
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerFFNConfig(preset="tpu").validate()
    cfg = TransformerFFNConfig(steps=100, warmup=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0) and lr_factor(100, cfg) == pytest.approx(0.1)
    w = windows(torch.arange(20), 4)
    assert w.shape == (4, 5) and torch.equal(w[1], torch.arange(4, 9))  # targets cover 1..16 once
    assert windows(torch.arange(20), 4, limit=8).shape == (2, 5)


def test_char_corpus_vocabulary_and_round_trip(shared_data):
    from unbottleneck.data import load_char_corpus

    c = load_char_corpus("ptb", data_dir=shared_data)
    assert c.vocab_size == 50 and c.dictionary.idx2word == sorted(c.dictionary.idx2word)
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (5_017_482, 393_042, 442_423)
    text = "".join(c.dictionary.decode(c.valid[:60]))
    with open(shared_data / "ptb" / "ptb.valid.txt") as fh:
        first = " ".join(fh.readline().split()) + "\n" + " ".join(fh.readline().split())
    assert text == first[:60]
