"""Diagnostics: linearisation, activation effect, recorder hooks, summaries."""

import math

import pytest
import torch
from torch import nn

from unbottleneck import AdaptiveLinear
from unbottleneck.diagnostics import (
    BottleneckRecorder,
    activation_effect,
    linearize,
    plot_histograms,
    summarize,
)

D = torch.float64


def test_sigmoid_effect_by_hand():
    a = torch.tensor([-2.0, -0.5, 0.0, 0.1, 1.0, 3.0], dtype=D)
    by_hand = torch.tensor([1 / (1 + math.exp(-v)) - (0.25 * v + 0.5) for v in a.tolist()], dtype=D)
    torch.testing.assert_close(activation_effect(torch.sigmoid, a), by_hand, rtol=0, atol=1e-15)
    lin = linearize(nn.Sigmoid())
    assert (lin.slope, lin.intercept, lin.kink) == (0.25, 0.5, False)


@pytest.mark.parametrize(
    "phi, slope, intercept",
    [(torch.tanh, 1.0, 0.0), (nn.GELU(), 0.5, 0.0), (nn.SiLU(), 0.5, 0.0),
     (nn.Softplus(), 0.5, math.log(2.0)), (nn.ELU(), 1.0, 0.0)],
)
def test_linearize_smooth_activations(phi, slope, intercept):
    lin = linearize(phi)
    assert not lin.kink
    assert lin.slope == pytest.approx(slope, abs=1e-12)
    assert lin.intercept == pytest.approx(intercept, abs=1e-12)


def test_linearize_kinks():
    relu = linearize(nn.ReLU())
    assert relu.kink and relu.slope == 0.5  # mean of the one-sided slopes 0 and 1
    assert linearize(nn.ReLU(), kink="autograd").slope == 0.0  # autograd's value at 0
    leaky = linearize(nn.LeakyReLU(0.1))
    assert leaky.kink and leaky.slope == pytest.approx(0.55)
    # ReLU's effect is then |a| / 2
    a = torch.randn(100, dtype=D)
    torch.testing.assert_close(activation_effect(torch.relu, a, relu), a.abs() / 2)


def test_linearize_works_under_no_grad_and_inference_mode():
    with torch.no_grad():
        assert linearize(torch.sigmoid).slope == 0.25
    with torch.inference_mode():
        assert linearize(nn.Tanh()).slope == 1.0


def test_linearize_bad_arguments():
    with pytest.raises(ValueError, match="unknown kink mode"):
        linearize(torch.relu, kink="left")
    with pytest.raises(ValueError, match="element-wise"):
        linearize(lambda x: torch.cat([x, x]))
    with pytest.raises(TypeError, match="floating point tensor"):
        activation_effect(torch.relu, torch.ones(3, dtype=torch.long))


def test_summarize_known_sample():
    v = torch.tensor([-0.1, 0.0, 0.02, 0.04, 0.2], dtype=D)
    s = summarize(v, threshold=0.05)
    assert s["n"] == 5
    assert s["share_beyond"] == pytest.approx(0.4)
    assert s["mean"] == pytest.approx(0.032)
    assert s["std"] == pytest.approx(float(v.std(unbiased=False)))
    assert s["q50"] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="empty"):
        summarize(torch.empty(0))
    with pytest.raises(ValueError, match="NaN or inf"):
        summarize(torch.tensor([0.0, float("nan")]))


def test_recorder_on_a_static_model_reproduces_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 5), nn.ReLU(inplace=True),
                          nn.Linear(5, 2)).to(D)
    x = torch.randn(30, 4, dtype=D)
    with BottleneckRecorder(model) as rec:
        y = model(x)
    a1 = model[0](x)
    a2 = model[2](torch.sigmoid(a1))
    r1, r3 = rec.records["1"], rec.records["3"]
    assert (r1.kind, r1.activation, r1.seen) == ("activation", "Sigmoid", 30 * 6)
    assert (r3.activation, r3.seen) == ("ReLU", 30 * 5)
    # every element recorded (below the cap), so the samples are a permutation-free copy
    torch.testing.assert_close(r1.preactivation, a1.reshape(-1))
    torch.testing.assert_close(r1.effect, (torch.sigmoid(a1) - 0.25 * a1 - 0.5).reshape(-1))
    torch.testing.assert_close(r3.preactivation, a2.reshape(-1))  # read before the inplace ReLU ran
    torch.testing.assert_close(r3.effect, (a2.abs() / 2).reshape(-1))
    torch.testing.assert_close(y, model(x))  # recording did not change the model's output
    s = rec.summary()
    assert s["1"]["slope"] == 0.25 and s["3"]["slope"] == 0.5
    assert s["1"]["effect"]["std"] == pytest.approx(float(r1.effect.std(unbiased=False)))


def test_recorder_adaptation_effect_with_and_without_activation():
    torch.manual_seed(0)
    l1 = AdaptiveLinear(4, 6, policy="sva", policy_init_scale=1.0, dtype=D)
    l2 = AdaptiveLinear(6, 3, policy="io", policy_init_scale=1.0, dtype=D)
    model = nn.Sequential(l1, nn.Sigmoid(), l2)
    x = torch.randn(10, 4, dtype=D)
    with BottleneckRecorder(model) as rec:
        model(x)
    r_sva, r_io = rec.records["0"], rec.records["2"]
    assert (r_sva.kind, r_sva.activation) == ("adaptive", "Sigmoid")
    assert (r_io.kind, r_io.activation) == ("adaptive", None)
    a = l1(x)
    static = (x @ (l1.weight_out @ l1.weight_in).t() + l1.bias)
    # the seed's comparison: sigmoid(W2 D W1 x + b) - (0.25 (W2 W1 x + b) + 0.5)
    torch.testing.assert_close(r_sva.effect, (torch.sigmoid(a) - (0.25 * static + 0.5)).reshape(-1))
    h = torch.sigmoid(a)
    torch.testing.assert_close(r_io.effect, (l2(h) - l2.linearized(h)).reshape(-1))
    # the sigmoid's own activation effect is recorded too
    assert rec.records["1"].kind == "activation"
    pre, eff = rec.pooled("adaptive")
    assert pre.numel() == eff.numel() == 10 * 6 + 10 * 3


def test_recorder_subsamples_uniformly_and_reproducibly():
    model = nn.Sequential(nn.Tanh())
    x = torch.randn(100, 50, dtype=D)

    def record(seed):
        with BottleneckRecorder(model, max_samples=1000, seed=seed) as rec:
            for chunk in x.split(10):
                model(chunk)
        return rec.records["0"]

    r = record(0)
    assert r.seen == 5000 and r.preactivation.numel() == 1000
    assert torch.equal(record(0).preactivation, r.preactivation)
    # the kept values are real samples, with their effects aligned
    assert torch.isin(r.preactivation, x.reshape(-1)).all()
    torch.testing.assert_close(r.effect, torch.tanh(r.preactivation) - r.preactivation)
    # drawn from every chunk, not just the first ones
    positions = torch.nonzero(torch.isin(x.reshape(-1), r.preactivation)).reshape(-1)
    assert positions.max() > 4000 and positions.min() < 1000


def test_recorder_detaches_hooks_and_resets():
    model = nn.Sequential(nn.Linear(3, 3), nn.GELU())
    rec = BottleneckRecorder(model)
    with rec:
        model(torch.randn(2, 3))
    model(torch.randn(2, 3))
    assert rec.records["1"].seen == 6  # nothing recorded after the context closed
    rec.reset()
    assert rec.records == {}


def test_recorder_bad_arguments():
    with pytest.raises(ValueError, match="no module to record"):
        BottleneckRecorder(nn.Sequential(nn.Linear(2, 2)), functional=False)
    linear = nn.Sequential(nn.Linear(2, 2))
    with BottleneckRecorder(linear) as rec:  # functional calls could appear: not refused up front
        linear(torch.randn(3, 2))
    with pytest.raises(ValueError, match="nothing recorded"):
        rec.pooled()
    with pytest.raises(ValueError, match="no submodule named 'x'"):
        BottleneckRecorder(nn.Sequential(nn.ReLU()), include=["x"])
    with pytest.raises(ValueError, match="max_samples"):
        BottleneckRecorder(nn.Sequential(nn.ReLU()), max_samples=0)
    with pytest.raises(TypeError, match="nn.Module"):
        BottleneckRecorder(lambda x: x)
    with pytest.raises(ValueError, match="unknown kink mode"):
        BottleneckRecorder(nn.Sequential(nn.ReLU()), kink="nope")
    with pytest.raises(ValueError, match="nothing recorded"):
        BottleneckRecorder(nn.Sequential(nn.ReLU())).pooled()


def test_plot_histograms(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ax = plot_histograms({"a": torch.randn(500), "b": 0.1 * torch.randn(500)}, log=True, title="t")
    assert len(ax.patches) > 0 and ax.get_title() == "t"
    ax.figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    with pytest.raises(ValueError, match="at least one sample"):
        plot_histograms({})


def test_spread_statistics_on_a_hand_made_sample():
    from unbottleneck.diagnostics.effect import spread

    # sorted: -4, 0, 1, 2, 3, 100 -> median 1 (lower median of 1, 2 as torch.median takes)
    v = torch.tensor([3.0, -4.0, 100.0, 0.0, 2.0, 1.0], dtype=D)
    s = spread(v)
    # quartiles by linear interpolation: positions 1.25 and 3.75 -> 0.25 and 2.75
    assert s["iqr"] == pytest.approx(2.75 - 0.25)
    # |v - 1| = 2, 5, 99, 1, 1, 0 -> sorted 0, 1, 1, 2, 5, 99 -> lower median 1
    assert s["mad"] == pytest.approx(1.0)
    assert s["std"] == pytest.approx(float(v.std(unbiased=False)))
    # one outlier moves the std, hardly the robust two
    assert s["std"] > 10 * s["iqr"]
    full = summarize(v)
    assert full["iqr"] == s["iqr"] and full["mad"] == s["mad"]
