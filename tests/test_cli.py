"""The command line and the experiment runner (smoke runs of every experiment)."""

import json

import pytest

from unbottleneck.cli import main
from unbottleneck.experiments import ConfigError, get_experiment, run_experiment
from unbottleneck.experiments.iat_fit import IATFitConfig
from unbottleneck.experiments.runner import apply_overrides

TINY = {
    "iat-fit": ["steps=20", "eval_every=10", "width=8", "grid_1d=101", "grid_2d=12",
                "n_train_2d=64", "activations=relu,iat-fourier"],
    "iat-memorize": ["n_samples=60", "epochs=2", "width=8", "depth=2"],
    "iat-points": ["fit_steps=10", "memorize_epochs=1", "factors=1,2", "fit_width=8", "jump_factors=2,8,16"],
    "iat-transfer": ["steps=10", "finetune_steps=3", "width=4"],
    "iat-classify": ["n_train=200", "mlp_width=8", "cnn_channels=2,4"],
    "iat-ablation": ["fit_steps=10", "memorize_epochs=1", "fit_width=8", "fourier_offsets=2"],
    "multimodal": ["steps=30", "eval_every=10", "n_train=100", "n_test=51"],
    "mnist-bottleneck": ["n_train=500", "diag_samples=200", "hidden=16,8",
                         "variants=sigmoid,sva-sigmoid,ioa-none"],
    "lm": ["preset=ptb-awd-lstm", "epochs=1", "max_batches=2", "eval_tokens=200", "bptt=8"],
    "lm-robustness": ["samples=2", "max_batches=2", "eval_tokens=200"],
    "lm-compare": ["models=ptb-small-alstm,ptb-small-lstm", "epochs=2", "eval_tokens=200"],
    "lm-stability": ["updates=2", "bptt=12"],
    "transformer-ffn": ["d_model=16", "steps=4", "final_eval_tokens=512"],
}


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "run" in capsys.readouterr().out
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in TINY:
        assert name in out


@pytest.mark.parametrize("name", sorted(TINY))
def test_quick_smoke_run_writes_outputs(name, tmp_path):
    sets = [a for kv in TINY[name] for a in ("--set", kv)]
    assert main(["run", name, "--quick", "--no-progress", "--out", str(tmp_path), *sets]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["experiment"] == name and results["quick"] is True
    assert results["metrics"]["summary"]
    for f in results["files"]:
        assert (tmp_path / f).stat().st_size > 0, f
    assert any(f.endswith(".png") for f in results["files"])
    assert any(f.endswith(".csv") for f in results["files"])
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# ") and "|" in report
    # no temporary files left behind by the atomic writer
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_memorize_on_mnist_quick(tmp_path):
    r = run_experiment("iat-memorize", quick=True, out_dir=tmp_path, progress=False,
                       overrides=["dataset=mnist", "n_samples=50", "epochs=1", "width=8", "depth=1"])
    assert r["config"]["dataset"] == "mnist"
    assert set(r["metrics"]["summary"]) == {"relu", "iat-fourier"}


def test_overrides_are_typed():
    cfg = apply_overrides(IATFitConfig(), ["steps=7", "lr=0.5", "targets=sines,chirp", "seeds=2"])
    assert cfg.steps == 7 and cfg.lr == 0.5 and cfg.targets == ("sines", "chirp") and cfg.seeds == 2


@pytest.mark.parametrize(
    "override, message",
    [("nosuchkey=1", "unknown config key"), ("steps=abc", "expected a value of type int"),
     ("steps", "expected key=value"), ("targets=nope", "unknown target"),
     ("activations=swish", "unknown activation"), ("activations=iat-bogus", "unknown basis"),
     ("steps=0", "must be >= 1")],
)
def test_bad_overrides_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(IATFitConfig(), [override])


def test_cli_errors_exit_nonzero(capsys, tmp_path):
    assert main(["run", "no-such-experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert main(["run", "iat-fit", "--set", "steps=abc", "--out", str(tmp_path)]) == 2
    assert "expected a value of type int" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()


def test_missing_dataset_names_the_option(capsys, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["run", "iat-memorize", "--quick", "--no-progress", "--out", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path / "empty"), "--set", "dataset=mnist"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "UNBOTTLENECK_DATA" in err


def test_show_config(capsys):
    assert main(["run", "iat-memorize", "--quick", "--show-config"]) == 0
    out = capsys.readouterr().out
    assert "epochs = 5" in out


def test_registry_quick_configs_validate():
    for name in TINY:
        exp = get_experiment(name)
        exp.make_config(quick=True)
        exp.make_config(quick=False)


@pytest.mark.parametrize("name", ["iat-fit", "multimodal", "transformer-ffn"])
def test_device_auto_runs_and_is_recorded_as_asked(name, tmp_path):
    """device=auto passes validation, so it must run (it used to reach torch.device("auto")
    in the experiments whose default is "cpu"); config.json keeps "auto"."""
    sets = [a for kv in [*TINY[name], "device=auto"] for a in ("--set", kv)]
    assert main(["run", name, "--quick", "--no-progress", "--out", str(tmp_path), *sets]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["device"] == "auto"
