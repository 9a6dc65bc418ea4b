"""``unbottleneck reproduce``: combined report, verdict table, skipped datasets, HTML."""

import json
import urllib.error
import urllib.request

import pytest
import torch

from unbottleneck.cli import main
from unbottleneck.experiments.claims import CLAIMS
from unbottleneck.experiments.html import markdown_to_html
from unbottleneck.experiments.reproduce import PLAN, run_reproduce

TINY = {
    "iat-memorize": ["n_samples=60", "epochs=2", "width=8", "depth=2"],
    "multimodal": ["steps=30", "eval_every=10", "n_train=100", "n_test=51", "models=static-2,sva-2"],
    "mnist-bottleneck": ["n_train=300", "diag_samples=100", "hidden=8", "variants=sigmoid,sva-sigmoid"],
}
TINY_MNIST = ["n_train=300", "diag_samples=100", "hidden=8", "variants=sigmoid,sva-sigmoid", "epochs=1"]


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_reproduce_tiny_writes_verdicts_and_skips_missing_data(tmp_path, offline):
    summary = run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "no-data"),
                            progress=False, only=["iat-memorize", "multimodal", "mnist-seed"],
                            overrides=TINY, command="test")
    exps = summary["experiments"]
    assert exps["iat-memorize"]["status"] == "ok" and exps["multimodal"]["status"] == "ok"
    assert exps["mnist-seed"]["status"] == "skipped"
    assert "mnist" in exps["mnist-seed"]["detail"] and "--data-dir" in exps["mnist-seed"]["detail"]
    by_id = {c["id"]: c for c in summary["claims"]}
    assert set(by_id) == {c.id for c in CLAIMS}
    assert by_id["iat-memorize"]["verdict"] in ("met", "not met")
    assert "ReLU" in by_id["iat-memorize"]["measured"]
    assert by_id["mnist-sigmoid"]["verdict"] == "not run"
    assert by_id["iat-fit"]["verdict"] == "not run"  # not in this run

    report = (tmp_path / "report.md").read_text()
    assert "| area | seed claim | criterion | measured | verdict |" in report
    assert "mnist-seed | skipped" in report
    assert "![train accuracy](iat-memorize/train_accuracy.png)" not in report  # links are relinked:
    assert "](iat-memorize/train_accuracy.png)" in report
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert html.count("data:image/png;base64,") >= 2  # figures embedded: one self-contained file
    assert json.loads((tmp_path / "summary.json").read_text())["claims"] == summary["claims"]


def test_reproduce_reports_a_failing_experiment_and_goes_on(tmp_path, offline):
    bad = {**TINY, "multimodal": ["steps=0"]}  # rejected by the config's validation
    summary = run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "none"), progress=False,
                            only=["iat-memorize", "multimodal"], overrides=bad)
    assert summary["experiments"]["multimodal"]["status"] == "failed"
    assert "steps must be >= 1" in summary["experiments"]["multimodal"]["detail"]
    assert summary["experiments"]["iat-memorize"]["status"] == "ok"
    assert (tmp_path / "multimodal" / "error.txt").is_file()


def test_an_interrupted_step_stops_the_whole_reproduce(tmp_path, monkeypatch, capsys):
    """SIGINT / SIGTERM inside a step's training loop ends the run (exit 128 + signal),
    instead of being recorded as a failed step while the next steps still run."""
    import signal

    from unbottleneck.experiments import reproduce
    from unbottleneck.training import TrainingInterrupted

    ran = []

    def interrupted(name, **kwargs):
        ran.append(name)
        raise TrainingInterrupted(signal.SIGTERM, None)

    monkeypatch.setattr(reproduce, "run_experiment", interrupted)
    with pytest.raises(TrainingInterrupted):
        run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["iat-fit", "iat-memorize"])
    assert ran == ["iat-fit"]
    code = main(["reproduce", "--quick", "--only", "iat-fit,iat-memorize", "--out", str(tmp_path),
                 "--no-progress"])
    assert code == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM" in capsys.readouterr().err
    assert ran == ["iat-fit", "iat-fit"]


def test_reproduce_cli_errors(capsys, tmp_path):
    assert main(["reproduce", "--only", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown experiment(s) 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "--threads", "0", "--out", str(tmp_path)]) == 2


def test_plan_covers_every_claim():
    planned = {s.id for s in PLAN}
    assert {step for c in CLAIMS for step in c.steps} <= planned
    assert len(planned) == len(PLAN)  # step ids are unique


def test_gpu_steps_are_skipped_with_their_command(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    summary = run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["lm-ptb-alstm"])
    step = summary["experiments"]["lm-ptb-alstm"]
    assert step["status"] == "skipped"
    assert "needs a GPU" in step["detail"] and "unbottleneck run lm --set preset=ptb-alstm" in step["detail"]
    by_id = {c["id"]: c for c in summary["claims"]}
    assert by_id["alstm-ptb"]["verdict"] == "not run"


def test_markdown_to_html_subset(tmp_path):
    from PIL import Image

    Image.new("RGB", (2, 2)).save(tmp_path / "f.png")
    md = "# Title\n\nSome **bold** and `code` <b>.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- x\n- y\n\n![fig](f.png)\n"
    html = markdown_to_html(md, base=tmp_path, title="t")
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html and "&lt;b&gt;" in html
    assert "<th>a</th>" in html and "<td>2</td>" in html
    piped = markdown_to_html("| a | b |\n|---|---|\n| x \\| y | 2 |\n", base=tmp_path)
    assert "<td>x | y</td><td>2</td>" in piped  # an escaped pipe stays inside its cell
    assert "<ul><li>x</li><li>y</li></ul>" in html
    assert 'src="data:image/png;base64,' in html


def test_resume_reuses_a_finished_step_and_runs_the_rest(tmp_path, offline, monkeypatch):
    from unbottleneck.experiments import reproduce

    first = run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "none"), progress=False,
                          only=["iat-memorize"], overrides=TINY)
    assert first["experiments"]["iat-memorize"]["status"] == "ok"
    real = reproduce.run_experiment
    ran = []

    def counting(name, **kwargs):
        ran.append((name, kwargs.get("resume")))
        return real(name, **kwargs)

    monkeypatch.setattr(reproduce, "run_experiment", counting)
    again = run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "none"), progress=False,
                          only=["iat-memorize", "multimodal"], overrides=TINY, resume=True)
    assert ran == [("multimodal", False)]  # iat-memorize finished before: not run again
    step = again["experiments"]["iat-memorize"]
    assert step["status"] == "ok" and "reused" in step["detail"]
    by_id = {c["id"]: c for c in again["claims"]}
    assert by_id["iat-memorize"]["verdict"] in ("met", "not met")
    # a different config for a finished step: it runs again (not reused)
    ran.clear()
    changed = {**TINY, "iat-memorize": [*TINY["iat-memorize"][:-1], "depth=1"]}
    run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "none"), progress=False,
                  only=["iat-memorize"], overrides=changed, resume=True)
    assert ran == [("iat-memorize", False)]
    # without --resume everything runs
    ran.clear()
    run_reproduce(quick=True, out_dir=tmp_path, data_dir=str(tmp_path / "none"), progress=False,
                  only=["iat-memorize"], overrides=changed)
    assert ran == [("iat-memorize", False)]


def test_resume_continues_an_interrupted_step_from_its_checkpoints(tmp_path, monkeypatch, shared_data):
    """A step folder whose config.json matches but that has no results: resumed when the
    experiment can resume (mnist-bottleneck), started over when it cannot (iat-memorize)."""
    from unbottleneck.experiments import reproduce

    tiny = {"mnist-seed": TINY_MNIST, **TINY}
    run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["mnist-seed", "iat-memorize"],
                  overrides=tiny)
    for step in ("mnist-seed", "iat-memorize"):
        (tmp_path / step / "results.json").unlink()  # as if stopped before the end
    ran = []
    monkeypatch.setattr(reproduce, "run_experiment",
                        lambda name, **kw: ran.append((name, kw["resume"])) or {"metrics": {}, "quick": True})
    run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["mnist-seed", "iat-memorize"],
                  overrides=tiny, resume=True)
    assert ran == [("iat-memorize", False), ("mnist-bottleneck", True)]


def test_an_interrupted_reproduce_still_writes_the_report_of_finished_steps(tmp_path, offline, monkeypatch):
    import signal

    from unbottleneck.experiments import reproduce
    from unbottleneck.training import TrainingInterrupted

    real = reproduce.run_experiment

    def stop_at_multimodal(name, **kwargs):
        if name == "multimodal":
            raise TrainingInterrupted(signal.SIGINT, None)
        return real(name, **kwargs)

    monkeypatch.setattr(reproduce, "run_experiment", stop_at_multimodal)
    with pytest.raises(TrainingInterrupted):
        run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["iat-memorize", "multimodal"],
                      overrides=TINY)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["interrupted"] is True
    assert list(summary["experiments"]) == ["iat-memorize"]
    report = (tmp_path / "report.md").read_text()
    assert "Interrupted" in report and "iat-memorize" in report


def test_reproduce_exits_2_and_says_why_when_every_step_is_skipped(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["reproduce", "--quick", "--only", "lm-ptb-alstm,mnist-seed", "--out", str(tmp_path),
                 "--data-dir", str(tmp_path / "no-data"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "every step was skipped" in err
    assert "skipped lm-ptb-alstm: needs a GPU" in err and "skipped mnist-seed: dataset `mnist`" in err
    assert (tmp_path / "report.md").is_file()  # the report still says what was skipped


def test_docs_claims_lists_every_claim_as_the_code_does():
    from pathlib import Path

    from unbottleneck.experiments.claims import claims_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "claims.md"
    assert doc.read_text() == claims_markdown(), "regenerate docs/claims.md from claims_markdown()"
    for c in CLAIMS:
        assert f"`{c.id}`" in doc.read_text()


def test_every_log_line_of_a_reproduce_names_its_step(tmp_path, capsys, shared_data):
    from unbottleneck.experiments import run_experiment

    run_reproduce(quick=True, out_dir=tmp_path, progress=False, only=["iat-memorize"], overrides=TINY)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "reproduce: iat-memorize: started" and err[1].startswith("reproduce: iat-memorize: ok, ")
    # a training that logs (the language model) names the step it runs for
    run_experiment("lm", quick=True, out_dir=tmp_path / "lm", progress=False, label="reproduce [lm-x]")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith("reproduce [lm-x]: ") for line in lines)


def test_beyond_the_seeds_questions_get_measured_answers(tmp_path, shared_data):
    """transformer-ffn answers its stated questions in the summary and in a table of their own,
    apart from the claims' verdict counts."""
    from unbottleneck.experiments.questions import QUESTIONS

    assert {s for q in QUESTIONS for s in q.steps} <= {s.id for s in PLAN}
    tiny = {"transformer-ffn": ["d_model=16", "n_layers=1", "steps=3", "eval_every=3", "final_eval_tokens=512"]}
    summary = run_reproduce(quick=True, out_dir=tmp_path, data_dir=shared_data, progress=False,
                            only=["transformer-ffn"], overrides=tiny)
    answers = {q["id"]: q for q in summary["questions"]}
    assert set(answers) == {q.id for q in QUESTIONS}
    assert all(a["status"] == "answered" for a in answers.values()), answers
    assert "GELU effect block 0: IQR" in answers["transformer-bottleneck"]["answer"]
    assert "iat FFN val ppl" in answers["transformer-iat"]["answer"] and "lower in" in answers["transformer-iat"]["answer"]
    report = (tmp_path / "report.md").read_text()
    assert "## Beyond the seeds" in report and "| question | how measured | answer |" in report
    assert all(c["verdict"] == "not run" for c in summary["claims"])  # no seed claim reads this step
