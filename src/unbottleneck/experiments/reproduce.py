"""``unbottleneck reproduce``: run every experiment and put each measured number beside its claim.

Each experiment in :data:`PLAN` runs into ``OUT/<name>/`` through the normal
runner (config, results.json, CSV, PNG, report.md).  An experiment whose dataset
is missing is skipped with a line in the report saying which dataset and how to
provide it; one that fails is reported with its error and the others still run.
The combined report (``OUT/report.md`` and a self-contained ``OUT/report.html``
with every figure embedded) starts with the verdict table: each seed claim, the
criterion used, the measured value and met / not met.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..training import TrainingInterrupted
from .claims import CLAIMS, claims_for
from .common import markdown_table, table_cell
from .html import markdown_to_html
from .questions import QUESTIONS
from .runner import (
    atomic_write_bytes,
    config_json,
    default_out_dir,
    environment,
    get_experiment,
    run_experiment,
    saved_config_matches,
)


@dataclass(frozen=True)
class Step:
    """One run of the reproduction: an experiment with the overrides used in each mode.

    ``name`` (default: the experiment's) names the output subfolder and is what claims
    refer to.  A step with ``needs_cuda`` is skipped on machines without a GPU, with
    the command that runs it in the report.
    """

    experiment: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()
    name: str = ""
    needs_cuda: bool = False
    note: str = ""

    @property
    def id(self) -> str:
        return self.name or self.experiment


#: The modern MNIST regime's variants in ``reproduce`` (the IOA ones carry no claim).
_MODERN_VARIANTS = "variants=sigmoid,relu,sva-sigmoid,sva-none"
#: What ``reproduce`` runs, in order.  Full mode uses each experiment's default
#: config except where a CPU cannot afford it (the paper's language models run
#: only where CUDA is available; the CPU-scale aLSTM claims have their own steps).
PLAN: list[Step] = [
    Step("iat-fit"),
    Step("iat-memorize"),
    Step("iat-points"),
    Step("iat-transfer"),
    Step("iat-ablation"),
    Step("iat-classify"),
    Step("multimodal"),
    Step("transformer-ffn"),
    Step("mnist-bottleneck", name="mnist-seed", full=("regime=seed",), quick=("regime=seed",)),
    Step("mnist-bottleneck", name="mnist-modern", full=("regime=modern", _MODERN_VARIANTS),
         quick=("regime=modern",)),
    Step("lm-compare"),
    Step("lm-stability"),
    Step("lm-robustness"),
    Step("lm", name="lm-ptb-alstm", full=("preset=ptb-alstm",), quick=("preset=ptb-alstm",),
         needs_cuda=True, note="190 epochs of the 17.2M-parameter model"),
    Step("lm", name="lm-wt2-alstm", full=("preset=wt2-alstm",), quick=("preset=wt2-alstm",),
         needs_cuda=True, note="187 epochs of the 32.1M-parameter model"),
]


@dataclass
class Outcome:
    step: Step
    status: str  # "ok", "skipped", "failed"
    detail: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _missing_data(experiment: str, data_dir: str | None) -> str | None:
    """A message if a dataset the experiment needs is not available (None if all are)."""
    from ..data import ChecksumError, DatasetNotFoundError, fetch_dataset

    for name in get_experiment(experiment).needs_data:
        try:
            fetch_dataset(name, data_dir=data_dir, download=True)
        except DatasetNotFoundError as exc:
            first = str(exc).splitlines()[0]
            return (f"dataset `{name}` is missing ({first}); provide it with `--data-dir DIR` or "
                    "`UNBOTTLENECK_DATA`")
        except ChecksumError as exc:
            return f"dataset `{name}` failed its checksum: {exc}"
    return None


def _relink_images(text: str, prefix: str) -> str:
    """Point an experiment report's relative image links into its subfolder."""
    return re.sub(r"!\[([^\]]*)\]\((?!https?:|/)([^)]+)\)", rf"![\1]({prefix}/\2)", text)


def _demote_headings(text: str) -> str:
    return re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.M)


def _cuda_missing(step: Step) -> str | None:
    import torch

    if not step.needs_cuda or torch.cuda.is_available():
        return None
    sets = " ".join(f"--set {kv}" for kv in step.full)
    return (f"needs a GPU ({step.note}); run it there with `unbottleneck run {step.experiment} {sets} "
            f"--out runs/{step.id}`")


def _finished(out: Path, quick: bool, config: Any) -> dict[str, Any] | None:
    """The step's ``results.json`` if it finished with exactly this mode and config, else None."""
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = results.get("quick") == quick and results.get("config") == config_json(config)
    return results if same and "metrics" in results else None


def _run_step(step: Step, quick: bool, sets: list[str], out: Path, resume: bool, **kwargs: Any) -> Outcome:
    """Run (or, with ``resume``, reuse or continue) one step; failures become an Outcome."""
    t0 = time.time()
    try:
        exp = get_experiment(step.experiment)
        config = exp.make_config(quick=quick, overrides=sets)
        if resume and (done := _finished(out, quick, config)) is not None:
            return Outcome(step, "ok", "reused: finished by an earlier run", results=done,
                           seconds=float(done.get("wall_time_s", 0.0)))
        again = resume and exp.resumable and saved_config_matches(out, config)
        results = run_experiment(step.experiment, quick=quick, overrides=sets, out_dir=out,
                                 resume=again, **kwargs)
    except (KeyboardInterrupt, TrainingInterrupted):  # the user stops the whole run
        raise
    except Exception as exc:  # one failing experiment must not hide the others' results
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "error.txt", traceback.format_exc().encode())
        return Outcome(step, "failed", f"{type(exc).__name__}: {exc}", seconds=time.time() - t0)
    return Outcome(step, "ok", results=results, seconds=time.time() - t0)


def run_reproduce(
    quick: bool = False,
    out_dir: str | Path | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    only: list[str] | None = None,
    overrides: dict[str, list[str]] | None = None,
    command: str = "",
    resume: bool = False,
) -> dict[str, Any]:
    """Run the plan, write ``report.md``, ``report.html`` and ``summary.json``; return the summary.

    Args:
        quick: use every experiment's ``--quick`` variant (minutes in all).
        out_dir: output folder (default ``runs/reproduce[-quick]``); each experiment
            writes into a subfolder.
        data_dir: dataset root (else ``$UNBOTTLENECK_DATA``, else the default cache).
        only: restrict to these experiment names (in plan order).
        overrides: extra ``key=value`` overrides per experiment name (tests use tiny ones).
        resume: reuse every step whose ``results.json`` holds the same mode and config,
            continue interrupted steps from their checkpoints, run the rest.

    An interrupt (SIGINT / SIGTERM) stops the run after writing the report of the
    steps that finished; the exception then propagates.
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir("reproduce", quick)
    out.mkdir(parents=True, exist_ok=True)
    plan = _select(only)
    overrides = overrides or {}
    start = time.time()
    outcomes: list[Outcome] = []
    try:
        for step in plan:
            missing = _cuda_missing(step) or _missing_data(step.experiment, data_dir)
            if missing:
                outcomes.append(Outcome(step, "skipped", missing))
                continue
            sets = (list(step.quick if quick else step.full)
                    + list(overrides.get(step.id, overrides.get(step.experiment, ()))))
            _say(f"{step.id}: started")
            outcomes.append(_run_step(step, quick, sets, out / step.id, resume, data_dir=data_dir,
                                      progress=progress, command=command + f"  [{step.id}]",
                                      label=f"reproduce [{step.id}]"))
            last = outcomes[-1]
            _say(f"{step.id}: {last.status}" + (f" ({last.detail})" if last.detail else "")
                 + f", {last.seconds:.0f} s")
    except (KeyboardInterrupt, TrainingInterrupted):
        _write_outputs(outcomes, out, quick, command, start, interrupted=True)
        raise
    return _write_outputs(outcomes, out, quick, command, start)


def _say(msg: str) -> None:
    print(f"reproduce: {msg}", file=sys.stderr, flush=True)


def _select(only: list[str] | None) -> list[Step]:
    if not only:
        return PLAN
    known = {s.id for s in PLAN} | {s.experiment for s in PLAN}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise KeyError(f"unknown experiment(s) {', '.join(map(repr, unknown))} in --only; "
                       f"the plan has: {', '.join(s.id for s in PLAN)}")
    return [s for s in PLAN if s.id in only or s.experiment in only]


def _write_outputs(outcomes: list[Outcome], out: Path, quick: bool, command: str, start: float,
                   interrupted: bool = False) -> dict[str, Any]:
    verdicts = _verdicts(outcomes)
    summary = {
        "quick": quick,
        "command": command,
        "environment": environment(),
        "wall_time_s": round(time.time() - start, 1),
        "steps_time_s": round(sum(o.seconds for o in outcomes), 1),
        "interrupted": interrupted,
        "experiments": {o.step.id: {"experiment": o.step.experiment, "status": o.status,
                                    "detail": o.detail, "seconds": round(o.seconds, 1)}
                        for o in outcomes},
        "claims": verdicts,
        "questions": _answers(outcomes),
    }
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    md = _report(outcomes, verdicts, summary, out)
    atomic_write_bytes(out / "report.md", md.encode())
    atomic_write_bytes(out / "report.html", markdown_to_html(md, base=out, title="unbottleneck reproduce")
                       .encode())
    return summary


def _measure(steps: tuple[str, ...], by_name: dict[str, Outcome], read: Any) -> tuple[str, Any]:
    """``read`` applied to the steps' metrics, in order: ``("ok", its result)``, else
    ``("not run", why)`` for a step missing from the run or not finished, or ``("error",
    why)`` when the metrics do not hold what ``read`` needs."""
    found = [by_name.get(s) for s in steps]
    missing = [s for s, o in zip(steps, found, strict=True) if o is None]
    if missing:
        return "not run", f"not in this run ({', '.join(missing)})"
    failed = [o for o in found if o.status != "ok"]
    if failed:
        return "not run", "; ".join(f"{o.step.id} {o.status}: {o.detail}" for o in failed)
    try:
        return "ok", read(*(o.results["metrics"] for o in found))
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return "error", f"cannot evaluate ({type(exc).__name__}: {exc})"


def _verdicts(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    by_name = {o.step.id: o for o in outcomes}
    rows = []
    for claim in CLAIMS:
        status, result = _measure(claim.steps, by_name, claim.check)
        if status == "ok":
            measured, ok = result
            verdict = "undecided" if ok is None else ("met" if ok else "not met")
        else:  # a claim that cannot be evaluated from finished steps is undecided
            measured, verdict = result, "not run" if status == "not run" else "undecided"
        rows.append({"id": claim.id, "area": claim.area, "claim": claim.claim,
                     "criterion": claim.criterion, "experiment": claim.experiment,
                     "measured": measured, "verdict": verdict})
    return rows


def _answers(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """The beyond-the-seeds questions with their measured answers (or why there is none)."""
    by_name = {o.step.id: o for o in outcomes}
    rows = []
    for q in QUESTIONS:
        status, answer = _measure(q.steps, by_name, q.answer)
        status = "answered" if status == "ok" else "not run"
        rows.append({"id": q.id, "question": q.question, "method": q.method, "experiment": ", ".join(q.steps),
                     "answer": answer, "status": status})
    return rows


def _report(outcomes: list[Outcome], verdicts: list[dict], summary: dict, out: Path) -> str:
    quick = summary["quick"]
    counts = {v: sum(r["verdict"] == v for r in verdicts) for v in ("met", "not met", "undecided", "not run")}
    lines = [
        "# unbottleneck: reproduction report",
        "",
        f"Command: `{summary['command']}`" if summary["command"] else "",
        "",
        f"Mode: **{'quick (smoke-test sizes: verdicts are not evidence)' if quick else 'full'}**; "
        f"wall time {summary['wall_time_s']} s for this command, {summary['steps_time_s']} s for its "
        f"steps' own runs (a step reused under `--resume` counts with the time it took when it ran); "
        f"torch {summary['environment']['torch']} on "
        f"{summary['environment']['platform']} ({summary['environment']['threads']} threads).",
        *(["", "**Interrupted: only the steps listed below finished.**"] if summary.get("interrupted") else []),
        "",
        f"Verdicts: {counts['met']} met, {counts['not met']} not met, {counts['undecided']} undecided, "
        f"{counts['not run']} not run.",
        "",
        "## Claims",
        "",
        markdown_table(
            ["area", "seed claim", "criterion", "measured", "verdict"],
            [[r["area"], table_cell(r["claim"]), table_cell(r["criterion"]),
              f"{table_cell(r['measured'])} ({r['experiment']})",
              {"met": "**met**", "not met": "**not met**"}.get(r["verdict"], r["verdict"])]
             for r in verdicts],
        ),
        "",
        "## Beyond the seeds",
        "",
        "Stated questions, not seed claims (not counted in the verdicts above): the measured answer.",
        "",
        markdown_table(
            ["question", "how measured", "answer"],
            [[table_cell(r["question"]), table_cell(r["method"]), f"{table_cell(r['answer'])} ({r['experiment']})"]
             for r in summary["questions"]],
        ),
        "",
        "## Experiments",
        "",
        markdown_table(
            ["experiment", "status", "time (s)", "details"],
            [[o.step.id, o.status, f"{o.seconds:.0f}",
              table_cell(o.detail if o.status != "ok" else
                    f"[report]({o.step.id}/report.md)" + (f" ({o.detail})" if o.detail else ""))]
             for o in outcomes],
        ),
        "",
    ]
    for o in outcomes:
        if o.status != "ok":
            lines += [f"## {o.step.id}: {o.status}", "", o.detail, ""]
            continue
        report = out / o.step.id / "report.md"
        text = report.read_text() if report.is_file() else "(no report written)"
        own = claims_for(o.step.id)
        lines += [_demote_headings(_relink_images(text, o.step.id)).rstrip(), ""]
        if own:
            lines += ["Claims checked here: " + ", ".join(c.id for c in own) + ".", ""]
    return "\n".join(lines) + "\n"
