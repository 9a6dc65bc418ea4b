"""Language-model pipeline: dropouts, weight drop, the LM wrapper, configs, training, resume."""

import dataclasses
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from unbottleneck.data import Corpus
from unbottleneck.experiments import ConfigError, run_experiment
from unbottleneck.experiments.runner import apply_overrides
from unbottleneck.lm import (
    PRESETS,
    IterateAverage,
    LMConfig,
    LMTrainer,
    LockedDropout,
    LSTMStack,
    RNNLanguageModel,
    TrainingDiverged,
    WeightDropLSTM,
    alstm_available,
    alstm_parameter_count,
    ar_tar_penalty,
    build_model,
    detach_state,
    embedding_dropout,
    get_preset,
    load_checkpoint,
    lstm_parameter_count,
)
from unbottleneck.lm import train as train_mod

needs_alstm = pytest.mark.skipif(not alstm_available(),
                                 reason="unbottleneck.adaptive.alstm not available yet")
CORES = ["lstm", "awd-lstm"] + (["alstm"] if alstm_available() else [])


pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def toy_corpus(seed: int = 0, n_words: int = 20) -> Corpus:
    """Sentences from a sparse Markov chain (2 successors per word): easy to learn, not trivial."""
    g = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)]
    succ = {w: g.sample(words, 2) for w in words}

    def text(lines: int) -> str:
        out = []
        for _ in range(lines):
            w = g.choice(words)
            sent = [w]
            for _ in range(g.randint(3, 8)):
                w = g.choice(succ[w])
                sent.append(w)
            out.append(" ".join(sent))
        return "\n".join(out)

    return Corpus.from_texts(text(260), text(40), text(40), name="toy")


def tiny_cfg(**kw) -> LMConfig:
    base = dict(dataset="ptb", core="lstm", embedding_size=12, hidden_size=16, adapt_size=4,
                num_layers=2, dropoute=0.05, dropouti=0.1, dropouth=0.1, dropouta=0.0,
                dropouto=0.1, lr=1e-2, lr_cuts=(), epochs=2, batch_size=4, eval_batch_size=4,
                test_batch_size=2, bptt=12, min_seq_len=2, log_interval=5, seed=7, device="cpu")
    base.update(kw)
    cfg = LMConfig(**base)
    cfg.validate()
    return cfg


TIME_KEYS = ("train_time_s", "eval_time_s", "tokens_per_s")


def _strip_times(history):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in history]


# ---------------------------------------------------------------------------------------
# Dropouts
# ---------------------------------------------------------------------------------------


def test_embedding_dropout_drops_whole_word_rows():
    torch.manual_seed(0)
    V, E, p = 2000, 6, 0.3
    weight = torch.randn(V, E)
    tokens = torch.arange(V).repeat(3).view(3, V)  # every word three times
    out = embedding_dropout(weight, tokens, p, training=True)
    assert out.shape == (3, V, E)
    dropped = (out == 0).all(-1)  # (3, V)
    # a word type is dropped everywhere or nowhere
    assert torch.equal(dropped[0], dropped[1]) and torch.equal(dropped[0], dropped[2])
    kept = ~dropped[0]
    assert torch.allclose(out[0][kept], weight[kept] / (1 - p))
    assert abs(dropped[0].float().mean().item() - p) < 0.05
    # eval mode and p = 0: plain lookup
    assert torch.equal(embedding_dropout(weight, tokens, p, training=False), weight[tokens])
    assert torch.equal(embedding_dropout(weight, tokens, 0.0, training=True), weight[tokens])


def test_embedding_dropout_gradient_flows_to_kept_rows_only():
    weight = torch.randn(50, 4, dtype=torch.float64, requires_grad=True)
    tokens = torch.arange(50).view(5, 10)
    torch.manual_seed(1)
    out = embedding_dropout(weight, tokens, 0.5)
    out.sum().backward()
    kept = (out.detach() != 0).any(-1).flatten()
    assert torch.allclose(weight.grad[kept], torch.full_like(weight.grad[kept], 2.0))
    assert torch.all(weight.grad[~kept] == 0)


def test_locked_dropout_uses_one_mask_over_time():
    torch.manual_seed(0)
    ld = LockedDropout(0.4)
    x = torch.ones(9, 5, 7)
    y = ld(x)
    assert torch.equal(y, y[:1].expand_as(y))  # identical at every time step
    vals = y.unique()
    assert len(vals) == 2 and vals[0] == 0.0 and vals[1].item() == pytest.approx(1 / 0.6)
    assert not torch.equal(ld(x), y)  # a new mask per call
    bf = LockedDropout(0.4, batch_first=True)
    z = bf(torch.ones(5, 9, 7))  # (B, T, F): constant along dim 1
    assert torch.equal(z, z[:, :1].expand_as(z))
    ld.eval()
    assert ld(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LockedDropout(1.0)
    ld.train()
    with pytest.raises(ValueError, match="3-D"):
        ld(torch.ones(4, 4))


# ---------------------------------------------------------------------------------------
# Weight drop
# ---------------------------------------------------------------------------------------


def _reference_lstm(x, w_ih, w_hh, b_ih, b_hh):
    """Slow, obviously-correct one-layer LSTM: x (T, B, n) -> (T, B, H)."""
    H = w_hh.shape[1]
    h = x.new_zeros(x.shape[1], H)
    c = x.new_zeros(x.shape[1], H)
    outs = []
    for t in range(x.shape[0]):
        gates = x[t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs)


def test_weight_drop_matches_reference_with_the_same_mask():
    wd = WeightDropLSTM(3, 5, weight_dropout=0.5, dtype=torch.float64)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    lstm = wd.lstm
    torch.manual_seed(11)
    out, _ = wd(x)
    torch.manual_seed(11)  # the module draws its mask first: redraw the same one
    dropped = F.dropout(lstm.weight_hh_l0, 0.5, training=True)
    assert (dropped == 0).any() and not (lstm.weight_hh_l0 == 0).any()
    ref = _reference_lstm(x, lstm.weight_ih_l0, dropped, lstm.bias_ih_l0, lstm.bias_hh_l0)
    torch.testing.assert_close(out, ref)
    wd.eval()  # no drop in eval: the raw weight
    ref_eval = _reference_lstm(x, lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0,
                               lstm.bias_hh_l0)
    torch.testing.assert_close(wd(x)[0], ref_eval)


def test_weight_drop_raw_weight_trains_and_masks_change():
    torch.manual_seed(0)
    wd = WeightDropLSTM(4, 6, weight_dropout=0.5)
    raw = wd.lstm.weight_hh_l0
    assert isinstance(raw, nn.Parameter)
    assert [n for n, _ in wd.named_parameters()] == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    x = torch.randn(5, 3, 4)
    o1, _ = wd(x)
    o2, _ = wd(x)
    assert not torch.allclose(o1, o2)  # different masks in train mode
    before = raw.detach().clone()
    opt = torch.optim.SGD(wd.parameters(), lr=0.5)
    o1.pow(2).sum().backward()
    assert raw.grad is not None and raw.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(before, raw.detach())  # the raw weight itself changed
    assert wd.lstm.weight_hh_l0 is raw  # still the same Parameter object
    wd.eval()
    e1, _ = wd(x)
    e2, _ = wd(x)
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, wd.lstm(x)[0])


def test_weight_drop_gradcheck():
    torch.manual_seed(0)
    wd = WeightDropLSTM(2, 3, weight_dropout=0.4, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64)
    w0 = wd.lstm.weight_hh_l0.detach().clone().requires_grad_(True)

    def fn(w_hh, inp):
        torch.manual_seed(5)  # the same mask on every evaluation
        return functional_call(wd, {"lstm.weight_hh_l0": w_hh}, (inp,))[0]

    assert torch.autograd.gradcheck(fn, (w0, x.requires_grad_(True)))


def test_weight_drop_state_dict_and_dtype():
    a = WeightDropLSTM(3, 4, 0.3)
    b = WeightDropLSTM(3, 4, 0.3)
    b.load_state_dict(a.state_dict())
    a.eval()
    b.eval()
    x = torch.randn(2, 2, 3)
    assert torch.equal(a(x)[0], b(x)[0])
    d = a.to(torch.float64)
    assert d.lstm.weight_hh_l0.dtype == torch.float64
    assert d(x.double())[0].dtype == torch.float64
    with pytest.raises(ValueError, match="weight_dropout"):
        WeightDropLSTM(3, 4, 1.5)


# ---------------------------------------------------------------------------------------
# LSTM stack and LM wrapper
# ---------------------------------------------------------------------------------------


def test_lstm_stack_equals_multilayer_nn_lstm_without_dropout():
    torch.manual_seed(0)
    stack = LSTMStack(5, 7, num_layers=3, dropout_hidden=0.3, weight_dropout=0.2).double()
    ref = nn.LSTM(5, 7, num_layers=3).double()
    with torch.no_grad():
        for i, layer in enumerate(stack.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{i}").copy_(getattr(layer.lstm, f"{name}_l0"))
    stack.eval()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    out, state = stack(x)
    ref_out, (h, c) = ref(x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(torch.cat([s[0] for s in state]), h)
    torch.testing.assert_close(torch.cat([s[1] for s in state]), c)
    # carrying the state over two halves equals one pass
    o1, s1 = stack(x[:2])
    o2, _ = stack(x[2:], LSTMStack.detach_state(s1))
    torch.testing.assert_close(torch.cat([o1, o2]), ref_out)
    bf = LSTMStack(5, 7, num_layers=3, batch_first=True).double()
    bf.load_state_dict(stack.state_dict())
    torch.testing.assert_close(bf(x.transpose(0, 1))[0], ref_out.transpose(0, 1))
    with pytest.raises(ValueError, match=r"expected input \(T, B, 5\)"):
        stack(torch.randn(4, 2, 6, dtype=torch.float64))


@pytest.mark.parametrize("core", CORES)
def test_tied_weights_are_really_shared(core):
    kw = {"wdrop": 0.2} if core == "awd-lstm" else {}
    m = RNNLanguageModel(50, embedding_size=8, hidden_size=12, num_layers=2, core=core,
                         adapt_size=4, **kw)
    assert m.decoder.weight is m.encoder.weight
    n = sum(p.numel() for p in m.parameters())  # counted once
    assert n == sum(p.numel() for p in dict(m.named_parameters()).values())
    expected = (alstm_parameter_count(50, 8, 12, 2, 4) if core == "alstm"
                else lstm_parameter_count(50, 8, 12, 2))
    assert n == expected
    with torch.no_grad():
        m.encoder.weight[3, 0] = 42.0
    assert m.decoder.weight[3, 0] == 42.0
    # a gradient from both uses lands in the one tensor
    m.eval()
    out = m(torch.tensor([[3], [4]]))
    out.logits.sum().backward()
    assert m.encoder.weight.grad is m.decoder.weight.grad
    # a state_dict round trip keeps the tie
    m2 = RNNLanguageModel(50, embedding_size=8, hidden_size=12, num_layers=2, core=core,
                          adapt_size=4, **kw)
    m2.load_state_dict(m.state_dict())
    assert m2.decoder.weight is m2.encoder.weight and m2.encoder.weight[3, 0] == 42.0


@pytest.mark.parametrize("core", CORES)
def test_lm_shapes_eval_determinism_and_state(core):
    torch.manual_seed(0)
    m = RNNLanguageModel(30, embedding_size=8, hidden_size=10, num_layers=2, core=core,
                         adapt_size=4, dropoute=0.2, dropouti=0.3, dropouth=0.2, dropouto=0.3,
                         dropouta=0.1 if core == "alstm" else 0.0,
                         wdrop=0.3 if core == "awd-lstm" else 0.0)
    x = torch.randint(0, 30, (7, 3))
    out = m(x)
    assert out.logits.shape == (7, 3, 30)
    assert out.raw_output.shape == out.output.shape == (7, 3, 8)
    assert not torch.equal(m(x).logits, out.logits)  # dropout active in train mode
    m.eval()
    a, b = m(x), m(x)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(a.raw_output, a.output)  # no dropouto in eval
    # state carried across segments == one long pass (eval mode)
    first = m(x[:4])
    second = m(x[4:], RNNLanguageModel.detach_state(first.state))
    torch.testing.assert_close(torch.cat([first.logits, second.logits]), a.logits)
    # batch_first mirrors the (T, B) layout
    bf = RNNLanguageModel(30, embedding_size=8, hidden_size=10, num_layers=2, core=core,
                          adapt_size=4, batch_first=True).eval()
    bf.load_state_dict(m.state_dict())
    torch.testing.assert_close(bf(x.t()).logits, a.logits.transpose(0, 1))


def test_untied_model_and_dtype():
    m = RNNLanguageModel(20, embedding_size=6, hidden_size=9, num_layers=2, core="lstm",
                         tie_weights=False, dtype=torch.float64)
    assert m.decoder.weight is not m.encoder.weight and m.decoder.weight.shape == (20, 9)
    assert m.output_size == 9 and m.decoder.weight.dtype == torch.float64
    assert sum(p.numel() for p in m.parameters()) == lstm_parameter_count(20, 6, 9, 2,
                                                                          tie_weights=False)
    m32 = m.to(torch.float32)
    assert m32(torch.tensor([[1, 2]])).logits.dtype == torch.float32


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"core": "gru"}, ValueError, "unknown core 'gru'"),
    ({"core": "lstm", "output_size": 7}, ValueError, "tie_weights needs the last layer width"),
    ({"core": "lstm", "dropouti": 1.0}, ValueError, r"dropouti must be a probability in \[0, 1\)"),
    ({"core": "lstm", "dropouta": 0.1}, ValueError, "dropouta applies only to the alstm"),
    ({"core": "lstm", "wdrop": 0.1}, ValueError, "wdrop .* applies only to the awd-lstm"),
    ({"core": "lstm", "hidden_size": 0}, ValueError, "hidden_size must be a positive int"),
])
def test_bad_model_arguments(kwargs, exc, match):
    base = {"embedding_size": 8, "hidden_size": 10, "num_layers": 2}
    with pytest.raises(exc, match=match):
        RNNLanguageModel(20, **{**base, **kwargs})


def test_bad_tokens_are_rejected():
    m = RNNLanguageModel(20, embedding_size=4, hidden_size=5, num_layers=1, core="lstm")
    with pytest.raises(TypeError, match="int64"):
        m(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\(T, B\)"):
        m(torch.zeros(3, 2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 20\)"):
        m(torch.tensor([[20]]))


def test_ar_tar_penalty_values():
    raw = torch.tensor([[[1.0]], [[3.0]], [[6.0]]])  # (T=3, B=1, E=1)
    out = torch.tensor([[[2.0]], [[0.0]], [[2.0]]])
    # AR: mean(out^2) = 8/3; TAR: mean of (2^2, 3^2) = 6.5
    assert ar_tar_penalty(raw, out, 2.0, 0.0).item() == pytest.approx(16 / 3)
    assert ar_tar_penalty(raw, out, 0.0, 1.0).item() == pytest.approx(6.5)
    assert ar_tar_penalty(raw, out, 0.0, 0.0).item() == 0.0


def test_detach_state_nested():
    a = torch.ones(2, requires_grad=True) * 2
    s = detach_state([(a, a), {"z": a}])
    assert not s[0][0].requires_grad and not s[1]["z"].requires_grad
    assert detach_state(None) is None
    with pytest.raises(TypeError):
        detach_state("nope")


# ---------------------------------------------------------------------------------------
# Configs and parameter counts
# ---------------------------------------------------------------------------------------


def test_parameter_counts_closed_form():
    assert alstm_parameter_count(10_000, 400, 1150, 2, 100) == 17_197_800
    assert alstm_parameter_count(33_278, 400, 1500, 2, 100) == 32_133_678
    assert lstm_parameter_count(10_000, 400, 1650, 2) == 20_836_400
    assert lstm_parameter_count(10_000, 400, 1150, 3) == 24_221_600
    small_a = alstm_parameter_count(10_000, 128, 256, 2, 32)
    small_l = lstm_parameter_count(10_000, 128, 340, 2)
    assert abs(small_l - small_a) / small_a < 0.01


@pytest.mark.parametrize("preset, vocab, expected", [
    ("ptb-lstm", 10_000, 20_836_400),
    ("ptb-awd-lstm", 10_000, 24_221_600),
    ("wt2-awd-lstm", 33_278, 33_556_078),
    ("ptb-small-lstm", 10_000, 2_169_840),
    ("ptb-small-awd-lstm", 10_000, 2_169_840),
])
def test_built_parameter_counts(preset, vocab, expected):
    cfg = get_preset(preset)
    with torch.device("meta"):
        m = build_model(cfg, vocab)
    assert sum(p.numel() for p in m.parameters()) == expected


@needs_alstm
@pytest.mark.parametrize("preset, vocab, expected", [
    ("ptb-alstm", 10_000, 17_197_800),
    ("wt2-alstm", 33_278, 32_133_678),
    ("ptb-small-alstm", 10_000, 2_168_592),
])
def test_alstm_parameter_counts(preset, vocab, expected):
    cfg = get_preset(preset)
    try:
        with torch.device("meta"):
            m = build_model(cfg, vocab)
    except (NotImplementedError, RuntimeError):  # an init without meta kernels: build on CPU
        m = build_model(cfg, vocab)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_reference_presets_follow_the_spec():
    a = get_preset("ptb-alstm")
    assert (a.core, a.embedding_size, a.hidden_size, a.num_layers, a.adapt_size) == (
        "alstm", 400, 1150, 2, 100)
    assert (a.dropouth, a.dropouta, a.dropoute, a.dropouti, a.dropouto) == (
        0.25, 0.1, 0.16, 0.6, 0.6)
    assert (a.optimizer, a.lr, tuple(a.betas), a.eps, a.weight_decay, a.clip) == (
        "adam", 3e-3, (0.0, 0.999), 1e-9, 1e-6, 5.0)
    assert (a.batch_size, a.bptt, tuple(a.lr_cuts), a.epochs) == (20, 70, (100, 160), 190)
    assert a.lr_at(100) == 3e-3 and a.lr_at(101) == pytest.approx(3e-4)
    assert a.lr_at(161) == pytest.approx(3e-5)
    w = get_preset("wt2-alstm")
    assert (w.dataset, w.hidden_size, tuple(w.lr_cuts), w.epochs) == (
        "wikitext-2", 1500, (80, 160), 187)
    awd = get_preset("ptb-awd-lstm")
    assert (awd.optimizer, awd.lr, awd.wdrop, awd.num_layers, awd.alpha, awd.beta) == (
        "nt-asgd", 30.0, 0.5, 3, 2.0, 1.0)
    for name in PRESETS:
        assert get_preset(name, quick=True).epochs <= 2


@pytest.mark.parametrize("overrides, match", [
    ({"dropouti": 1.2}, r"dropouti must be a probability in \[0, 1\)"),
    ({"core": "gru"}, "unknown core"),
    ({"optimizer": "rmsprop"}, "unknown optimizer"),
    ({"dataset": "imdb"}, "unknown corpus"),
    ({"output_size": 64}, "tie_weights needs output_size"),
    ({"wdrop": 0.5}, "wdrop applies only to core=awd-lstm"),
    ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ({"lr": -1.0}, "lr must be a finite number > 0"),
    ({"clip": float("nan")}, "clip must be a finite number >= 0"),
    ({"betas": (0.9,)}, "betas must be two numbers"),
    ({"lr_cuts": (0,)}, "lr_cuts must be epoch numbers"),
    ({"device": "tpu"}, "device must be"),
    ({"nonsense": 1}, "unknown config keys"),
])
def test_bad_config_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_preset("ptb-small-alstm", **overrides)


def test_experiment_config_errors():
    from unbottleneck.experiments import get_experiment

    exp = get_experiment("lm")
    cfg = exp.make_config(overrides=["preset=ptb-lstm", "dropouti=0.3", "lr_cuts=5,9"])
    full = cfg.resolve()
    assert full.core == "lstm" and full.dropouti == 0.3 and full.lr_cuts == (5, 9)
    assert full.hidden_size == 1650  # untouched fields come from the preset
    with pytest.raises(ConfigError, match="unknown preset"):
        apply_overrides(exp.config_cls(), ["preset=nope"])
    with pytest.raises(ConfigError, match="dropouto must be a probability"):
        apply_overrides(exp.config_cls(), ["preset=ptb-lstm", "dropouto=2"])
    with pytest.raises(ConfigError, match="expected a value of type int"):
        apply_overrides(exp.config_cls(), ["epochs=many"])


# ---------------------------------------------------------------------------------------
# Training, checkpoints, exact resume
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("core", CORES)
def test_tiny_training_reduces_loss(core):
    corpus = toy_corpus()
    extra = {"awd-lstm": {"wdrop": 0.2, "alpha": 1.0, "beta": 1.0}, "alstm": {"dropouta": 0.05},
             "lstm": {}}[core]
    cfg = tiny_cfg(core=core, epochs=3, lr=3e-2, **extra)
    tr = LMTrainer(cfg, corpus)
    before = tr.evaluate(tr.valid_data)
    assert before == pytest.approx(math.log(corpus.vocab_size), rel=0.1)  # uniform at start
    res = tr.fit()
    assert res["best_val_loss"] < 0.75 * before
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    assert math.isfinite(res["test_ppl"]) and res["params"] == tr.num_parameters


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["adam", "nt-asgd"])
def test_resume_after_epoch_is_bit_identical(tmp_path, optimizer, monkeypatch):
    corpus = toy_corpus()
    extra = {"optimizer": "nt-asgd", "lr": 1.0, "nonmono": 1, "core": "awd-lstm", "wdrop": 0.2,
             "epochs": 5, "max_batches": 10} if optimizer == "nt-asgd" else {}
    cfg = tiny_cfg(**extra)
    stop = 1 if optimizer == "adam" else 4  # nt-asgd: interrupted with a running average
    if optimizer == "nt-asgd":
        # Script the validation losses so that the switch to averaging happens after epoch 3.
        real = LMTrainer.evaluate
        script = {1: 3.0, 2: 2.5, 3: 3.5}

        def scripted(self, data):
            value = real(self, data)
            return script.get(self.epoch, value) if data is self.valid_data else value

        monkeypatch.setattr(LMTrainer, "evaluate", scripted)

    full = LMTrainer(cfg, corpus, tmp_path / "full").fit()

    def stop_after(tr):
        if tr.epoch == stop:
            raise Interrupt

    with pytest.raises(Interrupt):
        LMTrainer(cfg, corpus, tmp_path / "cut").fit(on_epoch_end=stop_after)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert ckpt["epoch"] == stop
    if optimizer == "nt-asgd":
        assert ckpt["average"]["count"] > 0
    resumed_tr = LMTrainer.resume(cfg, corpus, tmp_path / "cut")
    resumed = resumed_tr.fit()

    if optimizer == "nt-asgd":
        assert full["asgd_epoch"] == 3 and full["history"][-1]["asgd"]
    assert _strip_times(full["history"]) == _strip_times(resumed["history"])
    assert full["curve"] == resumed["curve"]
    assert full["test_loss"] == resumed["test_loss"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for x, y in zip(a["average"]["avg"], b["average"]["avg"], strict=True):
        assert torch.equal(x, y)
    best_a = torch.load(tmp_path / "full" / "best.pt", weights_only=True)["model"]
    best_b = torch.load(tmp_path / "cut" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_resume_mid_epoch_is_bit_identical(tmp_path):
    # the aLSTM when it exists: its state (per-layer NamedTuples) must survive the checkpoint
    core = "alstm" if alstm_available() else "lstm"
    corpus = toy_corpus()
    cfg = tiny_cfg(core=core, checkpoint_every=3, max_batches=10)
    full = LMTrainer(cfg, corpus, tmp_path / "full").fit()

    def crash(tr):  # dies two batches after the mid-epoch checkpoint at batch 6 of epoch 2
        if tr.epoch == 1 and tr.batch == 8:
            raise Interrupt

    with pytest.raises(Interrupt):
        LMTrainer(cfg, corpus, tmp_path / "cut").fit(on_batch_end=crash)
    ckpt = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["batch"]) == (1, 6) and ckpt["hidden"] is not None
    resumed = LMTrainer.resume(cfg, corpus, tmp_path / "cut").fit()
    assert _strip_times(full["history"]) == _strip_times(resumed["history"])
    assert full["test_loss"] == resumed["test_loss"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_extends_a_finished_run_and_checks_the_config(tmp_path):
    corpus = toy_corpus()
    two = LMTrainer(tiny_cfg(epochs=2), corpus, tmp_path / "two").fit()
    LMTrainer(tiny_cfg(epochs=1), corpus, tmp_path / "one").fit()
    extended = LMTrainer.resume(tiny_cfg(epochs=2), corpus, tmp_path / "one").fit()
    assert _strip_times(extended["history"]) == _strip_times(two["history"])
    with pytest.raises(ValueError, match="config differs.*dropouti"):
        LMTrainer.resume(tiny_cfg(dropouti=0.3), corpus, tmp_path / "one")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        LMTrainer.resume(tiny_cfg(), corpus, tmp_path / "nothing")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    train_mod.atomic_torch_save({"v": torch.tensor([1.0])}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # bytes hit the temporary file ...
        raise OSError("disk full (test)")  # ... and then the write fails

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train_mod.atomic_torch_save({"v": torch.tensor([2.0])}, path)
    with pytest.raises(OSError, match="disk full"):
        train_mod.atomic_torch_save({"v": torch.tensor([3.0])}, tmp_path / "new.pt")
    assert torch.load(path, weights_only=True)["v"].item() == 1.0  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp/partial files


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    corpus = toy_corpus()
    cfg = tiny_cfg(epochs=3)
    saved = {}

    def poison(tr):
        if tr.epoch == 1:
            saved.update({k: v.clone() for k, v in tr.model.state_dict().items()})
            with torch.no_grad():
                tr.model.encoder.weight.fill_(float("nan"))

    tr = LMTrainer(cfg, corpus, tmp_path)
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2, batch 1.*last good checkpoint") as exc:
        tr.fit(on_epoch_end=poison)
    assert exc.value.epoch == 2 and exc.value.checkpoint == tmp_path / "checkpoint.pt"
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.equal(ckpt["model"][k], saved[k]) for k in saved)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_iterate_average_is_the_mean_of_iterates():
    p = nn.Parameter(torch.tensor([0.0, 0.0]))
    avg = IterateAverage([p])
    avg.update()  # not started: no-op
    assert not avg.active
    avg.start()
    values = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([8.0, 0.0])]
    for v in values:
        with torch.no_grad():
            p.copy_(v)
        avg.update()
    with avg.swapped_in():
        torch.testing.assert_close(p.detach(), torch.stack(values).mean(0))
    assert torch.equal(p.detach(), values[-1])  # restored afterwards
    other = IterateAverage([p])
    other.load_state_dict(avg.state_dict())
    assert other.count == 3 and torch.equal(other.avg[0], avg.avg[0])


def test_nt_asgd_switches_when_validation_stops_improving(monkeypatch):
    corpus = toy_corpus()
    cfg = tiny_cfg(core="awd-lstm", wdrop=0.1, optimizer="nt-asgd", lr=1.0, nonmono=1, epochs=4)
    losses = {1: 5.0, 2: 4.0, 3: 3.0, 4: 6.0}  # epoch 4 is worse than the best but the last
    real = LMTrainer.evaluate
    calls = []

    def scripted(self, data):
        if data is self.valid_data:
            calls.append(self.average.count)
            return losses[self.epoch]
        return real(self, data)

    monkeypatch.setattr(LMTrainer, "evaluate", scripted)
    tr = LMTrainer(cfg, corpus)
    res = tr.fit()
    assert res["asgd_epoch"] == 4
    assert calls == [0, 0, 0, 0]  # every evaluation so far used raw weights
    assert tr.average.active and tr.average.count == 0  # averaging starts with the next step
    # once active, validation runs on the averaged weights
    tr.cfg = dataclasses.replace(cfg, epochs=5)
    losses[5] = 2.0
    tr.fit()
    assert calls[-1] > 0 and tr.history[-1]["asgd"]


# ---------------------------------------------------------------------------------------
# The `lm` experiment (CLI level) with resume
# ---------------------------------------------------------------------------------------


def test_lm_experiment_resume_matches_uninterrupted(tmp_path, shared_data):
    from unbottleneck.data import load_corpus

    sets = {"max_batches": 3, "eval_tokens": 400, "seed": 3}
    cfg = get_preset("ptb-small-lstm", quick=True, epochs=2, **sets)
    straight = LMTrainer(cfg, load_corpus("ptb", data_dir=shared_data), tmp_path / "a").fit()
    args = ["preset=ptb-small-lstm"] + [f"{k}={v}" for k, v in sets.items()]
    run_experiment("lm", quick=True, out_dir=tmp_path / "b", progress=False,
                   overrides=[*args, "epochs=1"], data_dir=str(shared_data))
    resumed = run_experiment("lm", quick=True, out_dir=tmp_path / "b", progress=False,
                             overrides=[*args, "epochs=2", "resume=true"],
                             data_dir=str(shared_data))
    assert _strip_times(straight["history"]) == _strip_times(resumed["metrics"]["history"])
    assert straight["test_ppl"] == resumed["metrics"]["summary"]["test_ppl"]
    assert (tmp_path / "b" / "metrics.csv").read_text().count("\n") == 3  # header + 2 epochs
    assert json.loads((tmp_path / "b" / "lm_config.json").read_text())["epochs"] == 2
    # a fresh (non-quick) run refuses to clobber a checkpoint; resume needs one
    with pytest.raises(ConfigError, match="already exists"):
        run_experiment("lm", out_dir=tmp_path / "b", progress=False,
                       overrides=["preset=ptb-small-lstm", "epochs=1"], data_dir=str(shared_data))
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_experiment("lm", quick=True, out_dir=tmp_path / "c", progress=False,
                       overrides=[*args, "resume=true"], data_dir=str(shared_data))


def test_carry_position_walks_through_the_stream_in_capped_epochs():
    corpus = toy_corpus()
    fresh = LMTrainer(tiny_cfg(max_batches=3, variable_bptt=False), corpus)
    carried = LMTrainer(tiny_cfg(max_batches=3, variable_bptt=False, carry_position=True), corpus)
    rows = carried.train_data.shape[0]
    fresh.train_epoch()
    assert fresh.pos == 0 and fresh.hidden is None  # the default: every epoch starts at the top
    seen = []
    for _ in range(2):
        carried.train_epoch()
        seen.append(carried.pos)
        assert carried.hidden is not None  # the recurrent state goes on with the stream
    assert seen == [3 * 12, 6 * 12]  # fixed bptt 12: consecutive stretches of 3 batches
    # at the end of the stream the next epoch starts over
    carried.cfg.max_batches = rows  # more than what is left
    carried.train_epoch()
    assert carried.pos == 0 and carried.hidden is None


@pytest.mark.parametrize("clip", [0.25, 0.0])
def test_training_step_reads_the_device_once(monkeypatch, clip):
    """One host sync per training step in the LM code (summed loss, gradient norm and raw loss
    read together) and no per-forward token-range sync inside the trainer, whose corpus ids
    are valid.  Counted: tensor reads made from unbottleneck/lm (the BPTT schedule's CPU
    generator draws and Adam's CPU step counters are no device syncs)."""
    import sys

    trainer = LMTrainer(tiny_cfg(clip=clip, max_batches=3), toy_corpus())
    assert trainer.model.check_tokens is False
    calls = []

    def counting(name, real):
        def read(self, *args):
            caller = sys._getframe(1).f_code.co_filename
            if "unbottleneck/lm/" in caller.replace("\\", "/"):
                calls.append(name)
            return real(self, *args)
        return read

    for name in ("tolist", "item", "__float__", "__bool__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    row = trainer.train_epoch()
    assert calls == ["tolist"] * 3 and math.isfinite(row["train_loss"])
