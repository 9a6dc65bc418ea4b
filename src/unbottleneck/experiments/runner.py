"""Experiment registry, typed config overrides and the output folder of a run.

Every experiment is a function ``run(cfg, ctx) -> dict`` registered with a
``@dataclass`` config and a small ``quick`` override set.  A run writes, into
its output folder: ``config.json``, ``results.json`` (config, environment,
metrics), CSV curves, PNG figures and ``report.md``.  All files are written
atomically (temporary file + ``os.replace``) so an interrupted run never
leaves a half-written result behind.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import sys
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .. import _validate
from ..training import DistInfo, GracefulInterrupt, atomic_write


class ConfigError(ValueError):
    """A bad ``--set key=value`` override or an invalid config value."""


@dataclass
class Experiment:
    name: str
    config_cls: type
    fn: Callable[[Any, RunContext], dict]
    quick: dict[str, Any]
    summary: str
    needs_data: tuple[str, ...] = ()
    resumable: bool = False  # --resume continues it from its checkpoints / stored sub-runs

    def make_config(self, quick: bool = False, overrides: Iterable[str] = ()) -> Any:
        overrides = list(overrides)
        if any(o.split("=", 1)[0].strip() == "quick" for o in overrides):
            raise ConfigError("set the smoke-test size with --quick, not --set quick=...")
        cfg = self.config_cls()
        if quick:
            cfg = dataclasses.replace(cfg, **self.quick)
        return apply_overrides(cfg, overrides)


REGISTRY: dict[str, Experiment] = {}


def register(
    name: str, config: type, quick: dict[str, Any], summary: str, needs_data: tuple[str, ...] = (),
    resumable: bool = False,
) -> Callable:
    """Decorator adding ``fn(cfg, ctx) -> dict`` to the registry under ``name``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError("config must be a dataclass")
    unknown = set(quick) - {f.name for f in fields(config)}
    if unknown:
        raise TypeError(f"quick overrides name unknown fields: {sorted(unknown)}")

    def wrap(fn: Callable) -> Callable:
        REGISTRY[name] = Experiment(name, config, fn, dict(quick), summary, needs_data, resumable)
        return fn

    return wrap


def get_experiment(name: str) -> Experiment:
    """Look up an experiment by name, with a helpful error for unknown ones."""
    from . import load_all

    load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------
# Typed overrides
# ---------------------------------------------------------------------------------------


def _convert(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        non_none = [a for a in args if a is not type(None)]
        # an empty value of a list field is the empty list, not "unset"
        empty_is_none = typing.get_origin(non_none[0]) not in (tuple, list)
        if text.lower() in ("none", "null") or (text == "" and empty_is_none):
            if type(None) in args:
                return None
        return _convert(text, non_none[0], key)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [t.strip() for t in text.split(",") if t.strip()]
        values = [_convert(t, inner, key) for t in items]
        return tuple(values) if origin is tuple else values
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(f"--set {key}={text}: expected a value of type {tp.__name__}") from None
    raise ConfigError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def apply_overrides(cfg: Any, overrides: Iterable[str]) -> Any:
    """Return a copy of ``cfg`` with ``key=value`` strings applied (typed by the field)."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in fields(cfg)]
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(names)}")
        changes[key] = _convert(value.strip(), hints[key], key)
    cfg = dataclasses.replace(cfg, **changes)
    validate = getattr(cfg, "validate", None)
    try:
        if callable(validate):
            validate()
        if isinstance(getattr(cfg, "device", None), str):  # every experiment's device, one check
            _validate.device("device", cfg.device)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    return cfg


# ---------------------------------------------------------------------------------------
# Run context: output folder, atomic writes, progress bars
# ---------------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`~unbottleneck.training.atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(data))


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def environment() -> dict[str, Any]:
    """Facts about the machine that a result depends on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


@dataclass
class RunContext:
    """Where and how a run writes its outputs.

    ``resume`` asks training loops to continue from the checkpoints under
    :attr:`checkpoint_dir`; ``interrupt`` is the run's
    :class:`~unbottleneck.training.GracefulInterrupt` (loops call
    ``ctx.interrupt.check(save)`` between steps); ``dist`` describes the torchrun
    process group, and only its rank 0 writes files.
    """

    out_dir: Path
    progress: bool = True
    data_dir: str | None = None
    command: str = ""
    label: str = ""  # what log lines start with: the experiment, or the reproduce step
    files: list[str] = field(default_factory=list)
    resume: bool = False
    interrupt: GracefulInterrupt = field(default_factory=GracefulInterrupt)
    dist: DistInfo = field(default_factory=DistInfo)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def writes(self) -> bool:
        """Whether this process writes outputs (rank 0 of a torchrun group, or the only process)."""
        return self.dist.is_main

    def log(self, msg: str) -> None:
        """One line on stderr, named by :attr:`label` (rank 0 only)."""
        if self.writes:
            print(f"{self.label or 'unbottleneck'}: {msg}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        """A tqdm progress bar (silent when progress is off, on ranks other than 0, and when
        stderr is not a terminal: a log file would fill with carriage-return redraws)."""
        from tqdm.auto import tqdm

        shown = self.progress and self.writes and sys.stderr.isatty()
        return tqdm(total=total, desc=desc, disable=not shown, leave=False, dynamic_ncols=True,
                    file=sys.stderr)

    def _record(self, name: str) -> Path:
        if name not in self.files:
            self.files.append(name)
        return self.out_dir / name

    def _write(self, path: Path, data: bytes) -> None:
        if self.writes:
            atomic_write_bytes(path, data)

    def write_json(self, name: str, obj: Any) -> Path:
        path = self._record(name)
        self._write(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())
        return path

    def write_csv(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write a list of dicts as CSV (columns: union of keys, in first-seen order)."""
        path = self._record(name)
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(_jsonable(rows))
        self._write(path, buf.getvalue().encode())
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self._record(name)
        self._write(path, data)
        return path

    def savefig(self, fig: Any, name: str) -> Path:
        """Save a matplotlib figure as PNG (atomically) and close it."""
        import matplotlib.pyplot as plt

        path = self._record(name)
        buf = io.BytesIO()
        if self.writes:
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        self._write(path, buf.getvalue())
        return path


def default_out_dir(name: str, quick: bool = False) -> Path:
    """Where a command writes when no ``--out`` is given: ``runs/NAME[-quick]``."""
    return Path("runs") / (name + ("-quick" if quick else ""))


def run_experiment(
    name: str,
    quick: bool = False,
    overrides: Iterable[str] = (),
    out_dir: str | os.PathLike | None = None,
    data_dir: str | None = None,
    progress: bool = True,
    command: str = "",
    resume: bool = False,
    label: str = "",
) -> dict[str, Any]:
    """Run a registered experiment and write its outputs; returns ``results.json``'s content.

    ``label`` names the run's log lines (default: the experiment's name).

    With ``resume=True`` the run continues from the checkpoints an interrupted run
    left in ``out_dir`` (its config must be the same).  Under ``torchrun`` the
    process group is set up here; every rank runs the experiment, rank 0 writes.
    SIGINT/SIGTERM make training loops checkpoint and raise
    :class:`~unbottleneck.training.TrainingInterrupted`.
    """
    import matplotlib

    from ..training import distributed

    matplotlib.use("Agg")  # headless: figures are only ever written to files
    exp = get_experiment(name)
    cfg = exp.make_config(quick=quick, overrides=overrides)
    out = Path(out_dir) if out_dir is not None else default_out_dir(name, quick)
    if resume:
        _check_resumable(out, cfg)
    resolved = cfg.resolve() if callable(getattr(cfg, "resolve", None)) else cfg
    dist = distributed.setup(getattr(resolved, "device", "cpu"))
    ctx = RunContext(out, progress=progress, data_dir=data_dir, command=command, resume=resume, dist=dist,
                     label=label or name)
    # An earlier finished run's config, put back if this run fails, so that a report is never
    # left beside the config of a different run (an interrupted run keeps its own: it resumes).
    earlier = (out / "config.json").read_bytes() if (out / "results.json").is_file() and \
        (out / "config.json").is_file() else None
    ctx.write_json("config.json", cfg)
    start = time.time()
    # Saturated sigmoids make denormal floats, which x86 CPUs process ~15x slower (one
    # MNIST epoch: 26 s instead of 1.7 s); flushing them to zero changes values below 1e-38.
    torch.set_flush_denormal(True)
    try:
        # constrained layout: no axis label runs into a neighbouring panel in any figure
        with ctx.interrupt, matplotlib.rc_context({"figure.constrained_layout.use": True}):
            metrics = exp.fn(_concrete_device(cfg), ctx)
    except Exception as exc:
        from ..training import TrainingInterrupted

        if earlier is not None and ctx.writes and not isinstance(exc, TrainingInterrupted):
            atomic_write_bytes(out / "config.json", earlier)
        raise
    finally:
        torch.set_flush_denormal(False)
    results = {
        "experiment": name,
        "quick": quick,
        "command": command,
        "config": cfg,
        "environment": environment(),
        "wall_time_s": round(time.time() - start, 2),
        "metrics": metrics,
        "files": sorted(ctx.files + ["results.json"]),
    }
    ctx.write_json("results.json", results)
    return _jsonable(results)


def _concrete_device(cfg: Any) -> Any:
    """``cfg`` with ``device="auto"`` made concrete (CUDA if available, else the CPU) for
    the experiment's code; config.json and results.json keep "auto" as it was asked."""
    if getattr(cfg, "device", None) != "auto":
        return cfg
    from ..training.distributed import _device

    return dataclasses.replace(cfg, device=str(_device("auto")))


def config_json(cfg: Any) -> Any:
    """``cfg`` as it reads back from a JSON file (tuples as lists, inf / nan as strings): the
    form in which a saved config is compared with the current one."""
    return json.loads(json.dumps(_jsonable(cfg)))


def saved_config_matches(out: Path, cfg: Any) -> bool:
    """Whether ``out/config.json`` holds exactly ``cfg``."""
    path = out / "config.json"
    return path.is_file() and json.loads(path.read_text()) == config_json(cfg)


def _check_resumable(out: Path, cfg: Any) -> None:
    """Refuse to resume into a folder without a run, or with a different config."""
    saved_path = out / "config.json"
    if not saved_path.is_file():
        raise ConfigError(f"nothing to resume: {saved_path} does not exist (run without --resume first)")
    saved = json.loads(saved_path.read_text())
    now = config_json(cfg)
    changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(
            "cannot resume with a different config; changed: "
            + ", ".join(f"{k} ({saved.get(k)!r} -> {now.get(k)!r})" for k in changed)
        )
