"""The IAT claims' checks on hand-made metrics: each judges its pre-registered statistic."""

from __future__ import annotations

import math

import pytest
from torch import nn

from unbottleneck import IAT
from unbottleneck.experiments.claims import CLAIMS, IAT_RELU
from unbottleneck.experiments.iat_fit import stability
from unbottleneck.experiments.iat_points import log_log_order, multiply_adds

CHECK = {c.id: c.check for c in CLAIMS}


def _ms(mean):
    return {"mean": mean, "std": 0.0, "n": 3}


def test_the_iat_relu_variant_is_fixed_and_judged_not_the_best_of_all():
    assert IAT_RELU == "iat-fourier"
    acts = {"relu": {"test_mse": _ms(0.1)}, "iat-fourier": {"test_mse": _ms(0.2)},
            "iat-piecewise_linear": {"test_mse": _ms(0.01)}}
    text, verdict = CHECK["iat-fit"]({"summary": {"sines": acts}})
    assert verdict is False and "best of all: iat-piecewise_linear" in text
    mem = {"relu": {"final_acc": _ms(0.8)}, "iat-fourier": {"final_acc": _ms(0.9)},
           "iat-rectangular": {"final_acc": _ms(0.95)}}
    text, verdict = CHECK["iat-memorize"]({"summary": mem})
    assert verdict is True and "iat-fourier 90.0%" in text
    del mem["iat-fourier"]
    assert CHECK["iat-memorize"]({"summary": mem})[1] is None


def _jumps(order_rect, order_cont, with_rect=True):
    entry = {"M": [128, 256, 512], "jump": [1.0, 0.5, 0.25], "order_from_M": 128, "order_all": order_cont}
    out = {"piecewise_linear": dict(entry, order=order_cont)}
    if with_rect:
        out["rectangular"] = dict(entry, order=order_rect, order_all=order_rect)
    return {"jumps": out}


def test_continuity_judges_the_fitted_order_and_needs_both_halves():
    assert CHECK["iat-continuity"](_jumps(0.0, -0.95))[1] is True
    assert CHECK["iat-continuity"](_jumps(0.0, -0.5))[1] is False  # shrinks, but slower than 1/M
    assert CHECK["iat-continuity"](_jumps(-0.5, -1.0))[1] is False  # rectangular shrinking
    text, verdict = CHECK["iat-continuity"](_jumps(0.0, -1.0, with_rect=False))
    assert verdict is None and "not measured" in text
    assert CHECK["iat-continuity"](_jumps(math.nan, -1.0))[1] is None


def _points(ms_lo, ms_hi, macs_lo, macs_hi, spikes=(1.0, 0.0), runs=5, div=0):
    def entry(ms, macs, sp):
        return {"smoothness": _ms(10.0 if ms == ms_lo else 5.0), "ms_per_step": _ms(ms), "macs": macs,
                "spikes": _ms(sp), "grad_spread": _ms(0.1), "divergences": div, "runs": runs}
    return {"summary": {"fourier": {"2": entry(ms_lo, macs_lo, spikes[0]), "16": entry(ms_hi, macs_hi, spikes[1])}}}


def test_cost_is_judged_by_multiply_adds_not_wall_time():
    # wall time fell (noise) but the multiply-adds grew: met
    assert CHECK["iat-points"](_points(2.9, 0.5, 100, 800))[1] is True
    assert CHECK["iat-points"](_points(0.5, 2.9, 800, 100))[1] is False


def test_stability_needs_five_seeds_and_no_divergence():
    assert CHECK["iat-stability"](_points(1, 1, 1, 2))[1] is True
    assert CHECK["iat-stability"](_points(1, 1, 1, 2, runs=2))[1] is None
    assert CHECK["iat-stability"](_points(1, 1, 1, 2, div=1))[1] is False
    assert CHECK["iat-stability"](_points(1, 1, 1, 2, spikes=(0.0, 3.0)))[1] is False


def test_transfer_basis_and_classify_checks():
    t = {"zero-shot": _ms(0.3), "transfer + fine-tune": _ms(0.1), "scratch, same budget": _ms(0.2)}
    m = {"width": 32, "summary": {"fourier": {"source": _ms(0.05), "targets": {"16": t, "64": dict(t)}}}}
    assert CHECK["iat-transfer"](m)[1] is True
    m["summary"]["fourier"]["targets"]["64"]["scratch, same budget"] = _ms(0.05)
    assert CHECK["iat-transfer"](m)[1] is False

    def var(family, zm, tv, mse, acc):
        return {"family": family, "zero_mean": zm, "tv_per_norm": tv, "fit_test_mse": _ms(mse),
                "memorize_acc": _ms(acc)}
    s = {"fourier+0": var("fourier", False, 18, 0.2, 0.7), "fourier+16": var("fourier", False, 80, 0.1, 0.9),
         "hats x1": var("hats", False, 7, 0.3, 0.6), "hats x4": var("hats", False, 3, 0.4, 0.5),
         "hats x1+zm": var("hats", True, 7, 0.25, 0.65)}
    text, verdict = CHECK["iat-basis"]({"summary": s})
    assert verdict is True and "6/6" in text

    acts = {"relu": {"test_acc": _ms(0.97), "s_per_epoch": _ms(1.0)},
            IAT_RELU: {"test_acc": _ms(0.98), "s_per_epoch": _ms(2.0)}}
    lower = {"relu": acts["relu"], IAT_RELU: {"test_acc": _ms(0.96), "s_per_epoch": _ms(2.0)}}
    assert CHECK["iat-classify"]({"summary": {"mlp": acts, "cnn": acts}})[1] is True
    assert CHECK["iat-classify"]({"summary": {"mlp": acts, "cnn": lower}})[1] is None
    assert CHECK["iat-classify"]({"summary": {"mlp": lower, "cnn": lower}})[1] is False


def test_stability_measures():
    calm = stability([4.0, 2.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3], [1.0] * 12)
    assert calm == {"spikes": 0.0, "grad_spread": 0.0, "diverged": 0.0}
    spiky = stability([4.0, 2.0, 1.0, 3.0, 0.8, 2.0, 0.6, 0.5, 0.45, 1.0, 0.35, 0.3], [1.0, 10.0] * 6)
    assert spiky["spikes"] == 3.0 and spiky["grad_spread"] > 0.4 and spiky["diverged"] == 0.0
    assert stability([1.0, math.nan, 2.0], [1.0] * 3)["diverged"] == 1.0
    assert stability([1.0, 2.0, 3.0], [1.0] * 3)["diverged"] == 1.0


def test_order_fit_and_multiply_adds():
    assert log_log_order([1, 2, 4, 8], [8, 4, 2, 1]) == pytest.approx(-1.0)
    assert log_log_order([1, 2, 4], [3, 3, 3]) == pytest.approx(0.0)
    assert math.isnan(log_log_order([4], [1]))
    net = nn.Sequential(nn.Linear(1, 8), IAT(8, num_points=32), nn.Linear(8, 2))
    assert multiply_adds(net) == 8 + 32 * 16 + 16
