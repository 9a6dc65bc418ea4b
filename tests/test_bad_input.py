"""Bad input gets a one-line error and exit status 2, never a traceback (issue 13's sample)."""

import pytest
import torch

from unbottleneck import GDNN, IAT, AdaptiveLinear, IATReLU
from unbottleneck.adaptive import ALSTM
from unbottleneck.cli import main


@pytest.mark.parametrize("name, setting, message", [
    ("iat-fit", "lr=-1", "lr must be a finite number > 0"),
    ("iat-fit", "lr=nan", "lr must be a finite number > 0"),
    ("iat-memorize", "lr=inf", "lr must be a finite number > 0"),
    ("multimodal", "lr=0", "lr must be a finite number > 0"),
    ("iat-fit", "activations=", "activations must name at least one entry"),
    ("iat-memorize", "activations=", "activations must name at least one entry"),
    ("multimodal", "mixtures=", "mixtures must name at least one entry"),
    ("multimodal", "models=", "models must name at least one entry"),
    ("iat-points", "bases=", "bases must name at least one entry"),
    ("mnist-bottleneck", "variants=", "variants must name at least one"),
])
def test_bad_settings_are_refused_in_one_line(name, setting, message, capsys, tmp_path):
    assert main(["run", name, "--quick", "--set", setting, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["run", "iat-memorize", "--quick"],
                                     ["reproduce", "--quick", "--only", "iat-memorize"]])
def test_an_unusable_out_folder_is_refused_in_one_line(command, capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile, "a file of that name exists"), (afile / "sub", "cannot write there")):
        assert main([*command, "--no-progress", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert afile.read_text() == "x"  # nothing lost


@pytest.mark.parametrize("batch_first", [False, True])
def test_alstm_takes_an_empty_batch_like_nn_lstm(batch_first):
    m = ALSTM(8, 6, adapt_size=4, num_layers=2, output_size=5, batch_first=batch_first)
    x = torch.randn(0, 3, 8) if batch_first else torch.randn(3, 0, 8)
    out, state = m(x)
    assert out.shape == ((0, 3, 5) if batch_first else (3, 0, 5))
    assert [tuple(t.shape) for t in state[1]] == [(0, 5), (0, 5), (0, 4), (0, 4)]
    out2, _ = m(x, state)  # the empty state goes back in
    assert out2.shape == out.shape
    with pytest.raises(ValueError, match="empty batch"):
        m(x, m.init_state(2))


def test_adaptive_linear_dtype_mismatch_is_clear_and_autocast_runs():
    layer = AdaptiveLinear(16, 8)
    with pytest.raises(TypeError, match="dtype torch.float16 does not match its parameters' torch.float32"):
        layer(torch.randn(3, 16).half())
    with pytest.raises(TypeError, match="context dtype"):
        layer(torch.randn(3, 16), context=torch.randn(3, 16, dtype=torch.float64))
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert torch.allclose(y.float(), layer(x), atol=0.1, rtol=0.05)  # bf16 rounding against float32


@pytest.mark.parametrize("name", ["lm", "mnist-bottleneck", "iat-fit", "lm-compare"])
@pytest.mark.parametrize("device, message", [
    ("banana", "device must be auto, cpu, cuda[:N] or mps, got 'banana'"),
    ("cuda", "CUDA is not available here"),
    ("mps", "MPS is not available here"),
])
def test_unavailable_or_unknown_devices_are_refused_before_the_run(name, device, message, capsys, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert main(["run", name, "--quick", "--set", f"device={device}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "config.json").exists()  # refused before anything was written


def test_report_html_renders_markdown_links():
    from unbottleneck.experiments.html import markdown_to_html

    html = markdown_to_html("| e | d |\n|---|---|\n| iat-fit | [report](iat-fit/report.md) (reused) |\n\n"
                            "[a & b](x?y=1&z=2) and `[code](not-a-link)`\n")
    assert '<td><a href="iat-fit/report.md">report</a> (reused)</td>' in html
    assert '<a href="x?y=1&amp;z=2">a &amp; b</a>' in html
    assert "<code>[code](not-a-link)</code>" in html
    assert "[report](" not in html


def test_package_conventions():
    from pathlib import Path

    import unbottleneck

    assert unbottleneck.ALSTM is ALSTM and "ALSTM" in unbottleneck.__all__
    root = Path(unbottleneck.__file__).parent
    assert (root / "py.typed").is_file()
    assert (root.parents[1] / "LICENSE").read_text().startswith("MIT License")


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("list", "run", "reproduce", "bench"):
        assert command in out
    assert "reproduce every seed claim" in out


@pytest.mark.parametrize("value", ["false", "true"])
def test_quick_is_set_by_the_flag_only(value, capsys, tmp_path):
    assert main(["run", "lm", "--quick", "--set", f"quick={value}", "--out", str(tmp_path)]) == 2
    assert "with --quick, not --set quick" in capsys.readouterr().err


class Custom:
    """An arbitrary object: what a checkpoint of this library never holds."""


def test_corrupt_checkpoints_say_what_is_wrong_and_what_to_do(tmp_path):
    from unbottleneck.training import CheckpointError, load_checkpoint

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\).*delete it"):
        load_checkpoint(empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint archive") as exc:
        load_checkpoint(garbage)
    assert "weights_only" not in str(exc.value)

    pickled = tmp_path / "pickled.pt"
    torch.save({"x": Custom()}, pickled)
    with pytest.raises(CheckpointError, match="objects other than tensors") as exc:
        load_checkpoint(pickled)
    assert "weights_only" not in str(exc.value)


def test_lm_list_entry_names_the_resume_flag(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "--resume continues" in out and "resume=true" not in out


def test_progress_bars_stay_out_of_non_terminal_logs(tmp_path, capsys):
    # pytest's captured stderr is not a terminal: a run with progress on writes no bar redraws
    assert main(["run", "iat-memorize", "--quick", "--out", str(tmp_path), "--set", "epochs=2",
                 "--set", "n_samples=40"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err


def test_resume_is_offered_only_where_it_works(capsys, tmp_path):
    assert main(["run", "iat-fit", "--quick", "--resume", "--out", str(tmp_path)]) == 2
    assert "iat-fit cannot resume" in capsys.readouterr().err
    from unbottleneck.experiments import get_experiment

    assert get_experiment("mnist-bottleneck").resumable and get_experiment("lm-compare").resumable
    assert not get_experiment("iat-points").resumable


def test_reports_count_in_english(tmp_path):
    from unbottleneck.experiments.common import plural

    assert plural(1, "seed") == "1 seed" and plural(3, "epoch") == "3 epochs" and plural(0, "step") == "0 steps"
    assert main(["run", "iat-memorize", "--quick", "--no-progress", "--out", str(tmp_path), "--set", "seeds=1",
                 "--set", "epochs=1", "--set", "n_samples=40"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "1 epoch, 1 seed;" in report and "1 seeds" not in report and "seed(s)" not in report


def test_a_failed_run_leaves_the_earlier_config_beside_the_earlier_report(tmp_path, monkeypatch):
    from unbottleneck.experiments import iat_memorize

    args = ["run", "iat-memorize", "--quick", "--no-progress", "--out", str(tmp_path), "--set", "epochs=1",
            "--set", "n_samples=40"]
    assert main(args) == 0
    before = (tmp_path / "config.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(iat_memorize, "make_mlp", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main([*args, "--set", "width=7"])
    assert (tmp_path / "config.json").read_text() == before  # still the config of the report beside it


@pytest.mark.parametrize("make, width", [(lambda: IATReLU(64), 64), (lambda: IAT(64, basis="fourier"), 64),
                                         (lambda: IAT(64, basis="rectangular"), 64),
                                         (lambda: GDNN(4, 32, 1, 2), 4)])
def test_meta_device_init_then_to_empty_and_load(make, width):
    torch.manual_seed(0)
    ref = make()
    with torch.device("meta"):
        m = make()
    assert all(b.is_meta for b in m.buffers())
    m = m.to_empty(device="cpu")
    m.load_state_dict(ref.state_dict())
    x = torch.randn(3, width)
    assert torch.allclose(m(x), ref(x), atol=1e-6)
    assert getattr(m, "kernel", None) == getattr(ref, "kernel", None)


def test_every_figure_uses_constrained_layout(tmp_path, monkeypatch):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from unbottleneck.experiments.runner import RunContext

    engines = []
    real = RunContext.savefig

    def recording(self, fig, name):
        engines.append((name, fig.get_layout_engine()))
        return real(self, fig, name)

    monkeypatch.setattr(RunContext, "savefig", recording)
    for name in ("multimodal", "iat-memorize"):
        assert main(["run", name, "--quick", "--no-progress", "--out", str(tmp_path / name)]) == 0
    assert len(engines) >= 4
    assert all(isinstance(e, ConstrainedLayoutEngine) for _, e in engines), engines
