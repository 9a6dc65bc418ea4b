"""lm-compare, lm-stability, lm-robustness: their verdict logic, resumable sub-runs, options."""

import json

import pytest

from unbottleneck.cli import main
from unbottleneck.experiments import lm_compare
from unbottleneck.experiments.claims import CLAIMS
from unbottleneck.experiments.lm_compare import epochs_to_reach, parse_check

CLAIM = {c.id: c for c in CLAIMS}


def compare_metrics(alstm_best, lstm_best, alstm_epochs, lstm_epochs):
    def model(best, epochs, params):
        return {"best_val_ppl_per_seed": best, "epochs_to_baseline_best": epochs, "params": params,
                "best_val_ppl": {"mean": sum(best) / len(best), "std": 0.0}}

    return {"baseline": "ptb-small-lstm",
            "summary": {"ptb-small-alstm": model(alstm_best, alstm_epochs, 100),
                        "ptb-small-lstm": model(lstm_best, lstm_epochs, 101)}}


@pytest.mark.parametrize("alstm, lstm, verdict", [
    ([150.0, 151.0], [160.0, 161.0], True),    # lower in every seed
    ([170.0, 171.0], [160.0, 161.0], False),   # higher in every seed
    ([150.0, 171.0], [160.0, 161.0], None),    # the seeds disagree: undecided
    ([150.0], [160.0], None),                  # one seed decides nothing
])
def test_alstm_vs_lstm_needs_every_seed_to_agree(alstm, lstm, verdict):
    text, ok = CLAIM["alstm-vs-lstm"].check(compare_metrics(alstm, lstm, [None] * len(alstm), [1] * len(lstm)))
    assert ok is verdict
    assert "per seed" in text


def test_epochs_to_reach_and_its_claim():
    hist = [{"epoch": 1, "val_ppl": 300.0}, {"epoch": 2, "val_ppl": "190.0"}, {"epoch": 3, "val_ppl": 170.0}]
    assert epochs_to_reach(hist, 200.0) == 2 and epochs_to_reach(hist, 100.0) is None
    check = CLAIM["alstm-epochs"].check
    assert check(compare_metrics([1.0, 1.0], [2.0, 2.0], [3, 4], [6, 6]))[1] is True
    assert check(compare_metrics([1.0, 1.0], [2.0, 2.0], [None, 6], [6, 6]))[1] is False
    assert check(compare_metrics([1.0, 1.0], [2.0, 2.0], [3, 6], [6, 6]))[1] is None


def test_stability_claim():
    def model(core, diverged, beat, runs=2):
        return {"core": core, "runs": runs, "diverged": diverged, "beat_unigram": beat,
                "unigram_ppl": 700.0, "max_grad_norm": 3.0}

    check = CLAIM["alstm-stable"].check
    ok = {"summary": {"a": model("alstm", 0, 2), "l": model("lstm", 1, 1)}}
    assert check(ok)[1] is True and "1/2 diverged" in check(ok)[0]
    assert check({"summary": {"a": model("alstm", 1, 1)}})[1] is False
    assert check({"summary": {"a": model("alstm", 0, 1)}})[1] is False
    assert check({"summary": {"l": model("lstm", 0, 2)}})[1] is None


def test_robustness_claim_needs_twenty_samples():
    def model(runs):
        return {"runs": runs, "diverged": 0, "not_converged": 0,
                "val_ppl_all_finite": {"median": 600.0, "q1": 590.0, "q3": 610.0}}

    check = CLAIM["alstm-robust"].check
    assert check({"summary": {"ptb-small-alstm": model(19), "ptb-small-lstm": model(19)}})[1] is None
    assert check({"summary": {"ptb-small-alstm": model(20), "ptb-small-lstm": model(20)}})[1] is True


def test_alstm_checks_are_typed_and_validated():
    assert parse_check("adapt_size=64") == {"adapt_size": 64}
    assert parse_check("dropouta=0") == {"dropouta": 0.0}
    with pytest.raises(ValueError, match="field=value"):
        parse_check("nonsense=1")
    with pytest.raises(ValueError, match="field=value"):
        parse_check("adapt_size")


@pytest.mark.parametrize("name", ["lm-compare", "lm-robustness", "lm-stability"])
def test_resume_reuses_finished_sub_runs(name, tmp_path, monkeypatch, shared_data):
    args = ["run", name, "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    first = json.loads((tmp_path / "results.json").read_text())["metrics"]
    stored = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert stored
    from unbottleneck.lm import LMTrainer

    def refuse(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(LMTrainer, "fit", refuse)
    assert main([*args, "--resume"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())["metrics"]
    assert json.dumps(again["summary"], sort_keys=True) == json.dumps(first["summary"], sort_keys=True)
    # a fresh run (no --resume) starts over: the stored runs are dropped
    monkeypatch.undo()
    (tmp_path / "runs" / stored[0]).write_text("{not json")
    assert main(args) == 0


def test_lm_compare_validation_errors(capsys):
    for sets, msg in ((["baseline=ptb-lstm"], "must be one of models"), (["lrs="], "at least one value"),
                      (["lrs=-1"], "finite number > 0"), (["dropout_scales=nan"], "dropout scale")):
        args = ["run", "lm-compare", "--quick", "--show-config", *(a for kv in sets for a in ("--set", kv))]
        assert main(args) == 2
        assert msg in capsys.readouterr().err
    assert lm_compare.LMCompareConfig().alstm_checks


def test_a_changed_preset_is_trained_again_on_resume(tmp_path, monkeypatch, shared_data):
    from unbottleneck.experiments import lm_stability
    from unbottleneck.lm import PRESETS

    args = ["run", "lm-stability", "--quick", "--no-progress", "--out", str(tmp_path)]
    assert main(args) == 0
    trained = []
    real = lm_stability.train_unclipped

    def counting(run_cfg, corpus):
        trained.append(run_cfg.core)
        return real(run_cfg, corpus)

    monkeypatch.setattr(lm_stability, "train_unclipped", counting)
    monkeypatch.setitem(PRESETS, "ptb-small-lstm", {**PRESETS["ptb-small-lstm"], "dropouth": 0.3})
    assert main([*args, "--resume"]) == 0
    assert trained == ["lstm"]  # the aLSTM's stored run still matches its config


def test_stability_refuses_more_updates_than_the_corpus_holds(tmp_path, capsys, shared_data):
    args = ["run", "lm-stability", "--quick", "--no-progress", "--out", str(tmp_path),
            "--set", "updates=100000000"]
    assert main(args) == 2
    assert "windows of 40 steps" in capsys.readouterr().err
