"""Command line: ``unbottleneck run NAME [--quick] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Sequence

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unbottleneck",
        description="Breaking the activation function bottleneck: list and run the experiments, "
                    "reproduce every seed claim in one report (reproduce), benchmark the kernels (bench).",
    )
    parser.add_argument("--version", action="version", version=f"unbottleneck {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser("list", help="list the experiments and what they do")

    run = sub.add_parser("run", help="run an experiment and write its report",
                         description="Run an experiment; outputs go to --out (default runs/NAME).")
    run.add_argument("name", help="experiment name (see `unbottleneck list`)")
    run.add_argument("--quick", action="store_true", help="small, fast variant (smoke test)")
    run.add_argument("--out", default=None, help="output folder (default runs/NAME, runs/NAME-quick with --quick)")
    run.add_argument("--data-dir", default=None,
                     help="folder holding the datasets (else $UNBOTTLENECK_DATA, else ~/.cache)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config field (repeatable); lists are comma separated")
    run.add_argument("--show-config", action="store_true", help="print the config and exit")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    run.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from the checkpoints in --out (same config)")

    rep = sub.add_parser(
        "reproduce", help="run every experiment and write one report with verdicts per seed claim",
        description="Run every experiment (skipping those whose dataset is missing) and write "
                    "OUT/report.md, OUT/report.html and OUT/summary.json.")
    rep.add_argument("--quick", action="store_true", help="smoke-test sizes (minutes in all)")
    rep.add_argument("--out", default=None, help="output folder (default runs/reproduce[-quick])")
    rep.add_argument("--data-dir", default=None,
                     help="folder holding the datasets (else $UNBOTTLENECK_DATA, else ~/.cache)")
    rep.add_argument("--only", default=None, metavar="NAME[,NAME]",
                     help="run only these experiments of the plan")
    rep.add_argument("--no-progress", action="store_true", help="hide progress bars")
    rep.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    rep.add_argument("--resume", action="store_true",
                     help="reuse steps that finished with the same config, continue interrupted ones")

    bench = sub.add_parser(
        "bench", help="speed and memory benchmarks, as ratios to baselines measured in the same run",
        description="Run the benchmarks (iat, adaptive_linear, gdnn, alstm) and write "
                    "OUT/results.json and OUT/results.md; the tables are printed too.")
    bench.add_argument("--quick", action="store_true", help="tiny sizes, 1-2 repeats (smoke test)")
    bench.add_argument("--only", default=None, metavar="NAME[,NAME]",
                       help="run only these benchmarks")
    bench.add_argument("--out", default=None, help="output folder (default runs/bench[-quick])")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bench.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    bench.add_argument("--device", default="auto",
                       help="auto (CUDA when available, else CPU), cpu, cuda[:N] or mps")
    return parser


def _command(argv: list[str]) -> str:
    """The command line as a shell would take it back (recorded in every report)."""
    return "unbottleneck " + shlex.join(argv)


def _writable_out(out: str) -> bool:
    """Create ``--out`` (and parents) or say in one line why it cannot be written to."""
    from pathlib import Path

    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".unbottleneck-write-test-{os.getpid()}"  # one per torchrun rank
        probe.write_bytes(b"")
        probe.unlink()
    except FileExistsError:
        print(f"unbottleneck: error: --out {out}: a file of that name exists (give a folder)", file=sys.stderr)
        return False
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        print(f"unbottleneck: error: --out {out}: cannot write there ({reason})", file=sys.stderr)
        return False
    return True


def _resume_command(argv: list[str], args: argparse.Namespace, out: str) -> str:
    """The command line that continues this one (``--resume`` added, ``--out`` made explicit)."""
    again = [a for a in argv if a != "--resume"] + ([] if args.out else ["--out", out])
    return _command([*again, "--resume"])


def _set_threads(threads: int | None) -> bool:
    if threads is None:
        return True
    if threads < 1:
        print("unbottleneck: error: --threads must be >= 1", file=sys.stderr)
        return False
    import torch

    torch.set_num_threads(threads)
    return True


def _reproduce(args: argparse.Namespace, argv: list[str]) -> int:
    from .experiments.reproduce import run_reproduce
    from .experiments.runner import default_out_dir
    from .training import TrainingInterrupted

    if not _set_threads(args.threads):
        return 2
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    out = args.out or str(default_out_dir("reproduce", args.quick))
    if not _writable_out(out):
        return 2
    try:
        summary = run_reproduce(quick=args.quick, out_dir=out, data_dir=args.data_dir,
                                progress=not args.no_progress, only=only, command=_command(argv),
                                resume=args.resume)
    except KeyError as exc:
        print(f"unbottleneck: error: {exc.args[0]}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:  # a step's training loop stopped on a signal
        print(f"unbottleneck: {exc}\nthe report covers the finished steps; continue with: "
              f"{_resume_command(argv, args, out)}", file=sys.stderr)
        return exc.exit_code
    verdicts = [c["verdict"] for c in summary["claims"]]
    steps = summary["experiments"]
    for name, e in steps.items():
        if e["status"] == "skipped":
            print(f"reproduce: skipped {name}: {e['detail']}", file=sys.stderr)
    if steps and all(e["status"] == "skipped" for e in steps.values()):
        print("unbottleneck: error: every step was skipped (reasons above); nothing was measured",
              file=sys.stderr)
        return 2
    failed = [n for n, e in steps.items() if e["status"] == "failed"]
    print(f"reproduce: {verdicts.count('met')} met, {verdicts.count('not met')} not met, "
          f"{verdicts.count('undecided')} undecided, {verdicts.count('not run')} not run; "
          f"report: {os.path.join(out, 'report.html')}")
    for name in failed:
        print(f"unbottleneck: error: experiment {name} failed: {steps[name]['detail']}", file=sys.stderr)
    return 1 if failed else 0


def _bench(args: argparse.Namespace, argv: list[str]) -> int:
    from .bench import run_benchmarks
    from .bench.runner import resolve_device, resolve_names

    if not _set_threads(args.threads):
        return 2
    if args.repeats < 1:
        print("unbottleneck: error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        names = resolve_names(args.only)
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"unbottleneck: error: {exc}", file=sys.stderr)
        return 2
    doc = run_benchmarks(names, quick=args.quick, repeats=args.repeats, out_dir=args.out,
                         progress=not args.no_progress, command=_command(argv), device=str(device))
    print(f"bench: done in {doc['wall_time_s']} s; results: "
          f"{os.path.join(doc['out_dir'], 'results.md')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unbottleneck`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"reproduce": _reproduce, "bench": _bench, "list": _list, "run": _run}[args.command]
    try:
        return handler(args, argv)
    except KeyboardInterrupt:
        print("unbottleneck: interrupted", file=sys.stderr)
        return 130


def _list(args: argparse.Namespace, argv: list[str]) -> int:
    from .experiments import REGISTRY, load_all

    load_all()
    width = max(len(n) for n in REGISTRY)
    for name in sorted(REGISTRY):
        print(f"{name.ljust(width)}  {REGISTRY[name].summary}")
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from .experiments import ConfigError, get_experiment, run_experiment
    from .experiments.runner import default_out_dir

    try:
        exp = get_experiment(args.name)
        cfg = exp.make_config(quick=args.quick, overrides=args.overrides)
    except (KeyError, ConfigError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"unbottleneck: error: {msg}", file=sys.stderr)
        return 2
    if args.show_config:
        for f in dataclasses.fields(cfg):
            print(f"{f.name} = {getattr(cfg, f.name)!r}")
        resolve = getattr(cfg, "resolve", None)
        if callable(resolve):  # configs built from presets: show what the run will use
            resolved = resolve()
            print(f"# resolved ({type(resolved).__name__}):")
            for f in dataclasses.fields(resolved):
                print(f"{f.name} = {getattr(resolved, f.name)!r}")
        return 0
    if not _set_threads(args.threads):
        return 2
    if args.resume and not exp.resumable:
        print(f"unbottleneck: error: {args.name} cannot resume (it runs in minutes and starts over); "
              "run it without --resume", file=sys.stderr)
        return 2
    from .data import ChecksumError, DatasetNotFoundError
    from .training import CheckpointError, TrainingDiverged, TrainingInterrupted

    out = args.out or str(default_out_dir(args.name, args.quick))
    if not _writable_out(out):
        return 2
    try:
        results = run_experiment(
            args.name,
            quick=args.quick,
            overrides=args.overrides,
            out_dir=out,
            data_dir=args.data_dir,
            progress=not args.no_progress,
            command=_command(argv),
            resume=args.resume,
        )
    except (DatasetNotFoundError, ChecksumError, ConfigError, CheckpointError) as exc:
        print(f"unbottleneck: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        if not exp.resumable:
            print(f"unbottleneck: {exc}\n{args.name} starts over when run again: {_command(argv)}",
                  file=sys.stderr)
            return exc.exit_code
        print(f"unbottleneck: {exc}\nresume with: {_resume_command(argv, args, out)}", file=sys.stderr)
        return exc.exit_code
    except TrainingDiverged as exc:
        print(f"unbottleneck: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: done in {results['wall_time_s']} s; report: {os.path.join(out, 'report.md')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
