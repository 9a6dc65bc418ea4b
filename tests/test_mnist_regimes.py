"""mnist-bottleneck's regimes, variants, dispersion ratios, re-parameterisation, and the claims on them."""

import json

import pytest
import torch

from unbottleneck.cli import main
from unbottleneck.experiments import ConfigError, get_experiment
from unbottleneck.experiments.claims import CLAIMS, DISPERSION_STAT
from unbottleneck.experiments.mnist_bottleneck import (
    REGIME_DEFAULTS,
    MNISTBottleneckConfig,
    MNISTNet,
    dispersion_ratios,
    parse_variant,
    reparameterised,
    rescaled_effect,
)


def test_regimes_fill_unset_fields_and_explicit_values_win():
    seed = MNISTBottleneckConfig().resolve()
    assert seed.regime == "seed" and seed.hidden == (500,) and seed.optimizer == "sgd"
    assert seed.lr == 0.1 and seed.epochs == 8 and seed.policy_bias is False
    modern = MNISTBottleneckConfig(regime="modern", lr=5e-4).resolve()
    assert modern.hidden == (128, 32) and modern.optimizer == "adam" and modern.lr == 5e-4
    assert set(REGIME_DEFAULTS["seed"]) == set(REGIME_DEFAULTS["modern"])
    with pytest.raises(ValueError, match="unknown regime"):
        MNISTBottleneckConfig(regime="ancient").validate()
    with pytest.raises(ConfigError, match="variants must name"):
        get_experiment("mnist-bottleneck").make_config(overrides=["variants="])


def test_variants_pin_or_inherit_the_policy_bias():
    assert parse_variant("sigmoid") == (None, "sigmoid", None)
    assert parse_variant("sva-none") == ("sva", "none", None)
    assert parse_variant("sva0-sigmoid") == ("sva", "sigmoid", False)
    assert parse_variant("ioa1-none") == ("io", "none", True)
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variant("svb-sigmoid")
    cfg = MNISTBottleneckConfig(hidden=(8,)).resolve()  # seed: policy_bias False
    net = MNISTNet("sva-sigmoid", cfg)
    assert net.net[0].policy_net.proj.bias is None
    assert MNISTNet("sva1-sigmoid", cfg).net[0].policy_net.proj.bias is not None
    # the seed regime draws the static weights of adaptive layers like the starter's
    w = MNISTNet("sva-sigmoid", MNISTBottleneckConfig(hidden=(500,)).resolve()).net[0].weight_in
    assert float(w.detach().abs().max()) <= 2 / 784**0.5 + 1e-6


def test_dispersion_ratios_divide_each_statistic_by_the_sigmoid_nets():
    def stats(std, iqr, mad):
        return {f"effect_{k}": {"mean": v} for k, v in (("std", std), ("iqr", iqr), ("mad", mad))}

    r = dispersion_ratios({"sigmoid": stats(2.0, 0.1, 0.05), "sva-sigmoid": stats(4.0, 5.0, 2.0)})
    assert r == {"sva-sigmoid": {"std": 2.0, "iqr": 50.0, "mad": 40.0}}
    assert dispersion_ratios({"relu": stats(1, 1, 1)}) == {}


def test_the_dispersion_claim_is_judged_on_the_iqr():
    assert DISPERSION_STAT == "iqr"
    claim = next(c for c in CLAIMS if c.id == "mnist-dispersion")
    assert "IQR" in claim.criterion and claim.steps == ("mnist-seed",)
    text, ok = claim.check({"dispersion_ratio": {"std": 100.0, "iqr": 20.0, "mad": 100.0}})
    assert ok is False and "IQR 20x" in text and "std 100x" in text
    assert claim.check({"dispersion_ratio": {"std": 1.0, "iqr": 31.0, "mad": 1.0}})[1] is True
    assert claim.check({"dispersion_ratio": None})[1] is None
    assert {c.id for c in CLAIMS} >= {"mnist-dispersion-modern", "mnist-sigmoid-modern"}


@pytest.mark.parametrize("variant", ["sva-sigmoid", "sva1-none", "ioa-sigmoid"])
def test_rescaling_keeps_the_network_but_changes_the_measured_effect(variant):
    torch.manual_seed(0)
    cfg = MNISTBottleneckConfig(hidden=(12,)).resolve()
    net = MNISTNet(variant, cfg).double()
    x = torch.rand(40, 784, dtype=torch.float64)
    base = rescaled_effect(net, x, 1.0, seed=0)
    doubled = rescaled_effect(net, x, 2.0, seed=0)
    assert not torch.allclose(base, doubled)
    # the re-parameterised copy computes the same function, with different weights
    twin = reparameterised(net, 2.0)
    with torch.no_grad():
        assert torch.allclose(twin(x), net(x), atol=1e-12)
    changed = [(a, b) for a, b in zip(twin.parameters(), net.parameters(), strict=True) if not torch.equal(a, b)]
    assert changed


def test_seed_regime_tiny_run_reports_three_statistics_and_the_gif(tmp_path):
    sets = ["n_train=300", "diag_samples=200", "hidden=8", "variants=sigmoid,sva-sigmoid,sva1-sigmoid",
            "epochs=1", "seeds=2"]
    args = ["run", "mnist-bottleneck", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main([*args, *(a for kv in sets for a in ("--set", kv))]) == 0
    m = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert m["regime"] == "seed"
    assert set(m["dispersion_ratio"]) == {"std", "iqr", "mad"}
    s = m["summary"]["sva-sigmoid"]
    for k in ("effect_std", "effect_iqr", "effect_mad", "pre_mean", "pre_std", "effect_share_beyond"):
        assert s[k]["n"] == 2
    assert set(s["rescaled_effect"]) == {"0.5", "2.0"}
    report = (tmp_path / "report.md").read_text()
    assert "depends on the parameterisation" in report and "IQR" in report
    from matplotlib import animation

    if animation.writers.is_available("pillow"):
        gif = (tmp_path / "effect_vs_preactivation.gif").read_bytes()
        assert gif[:6] in (b"GIF89a", b"GIF87a")
