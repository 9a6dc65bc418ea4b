"""Run benchmark modules, write ``results.json`` + ``results.md`` and print the tables."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._validate import positive_int
from ..experiments.runner import _jsonable, atomic_write_bytes, default_out_dir, environment


def resolve_names(only: str | Sequence[str] | None) -> list[str]:
    """Benchmark names from ``--only`` (comma separated); all of them when empty."""
    from . import BENCHMARKS

    if only is None or only == "" or only == []:
        return list(BENCHMARKS)
    parts = only.split(",") if isinstance(only, str) else list(only)
    names = [p.strip() for p in parts if p.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(map(repr, unknown))}; choose from {', '.join(BENCHMARKS)}"
        )
    if not names:
        raise ValueError(f"--only names no benchmark; choose from {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The benchmarks' device: ``auto`` is CUDA when available, else the CPU; a named device
    this machine lacks is refused with a ValueError (see :func:`unbottleneck._validate.device`)."""
    from .._validate import device as check_device

    name = check_device("device", str(device))
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_benchmark(name: str):
    """The module of benchmark ``name``, or None if it is not installed (yet)."""
    from . import BENCHMARKS

    path = BENCHMARKS[name]
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name == path:  # the module itself is missing, not one of its imports
            return None
        raise


def _fmt_number(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return "nan"
        ax = abs(x)
        if ax == 0:
            return "0"
        if ax >= 1000:
            return f"{x:.0f}"
        if ax >= 100:
            return f"{x:.1f}"
        if ax >= 0.01:
            return f"{x:.3g}"
        return f"{x:.2e}"
    return str(x)


def _fmt_spread(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, (list, tuple)) and len(x) == 2:
        return f"{_fmt_number(x[0])}-{_fmt_number(x[1])}"
    if isinstance(x, (int, float)):
        return f"±{_fmt_number(x)}"
    return str(x)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_markdown(result: dict[str, Any]) -> str:
    """A benchmark result as a Markdown section: one table and its notes."""
    lines = [f"## {result.get('name', '?')}", ""]
    rows = result.get("rows", [])
    if rows:
        header = ["case", "metric", "value", "spread", "baseline", "baseline value", "ratio",
                  "ratio spread", "target"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for row in rows:
            unit = row.get("unit")
            metric = row.get("metric", "")
            if unit:
                metric = f"{metric} [{unit}]"
            target = row.get("target")
            if target is not None:
                meets = row.get("meets")
                target = f"{target} ({'met' if meets else 'MISSED' if meets is False else '?'})"
            cells = [
                row.get("case", ""), metric, _fmt_number(row.get("value")),
                _fmt_spread(row.get("spread")), row.get("baseline", ""),
                _fmt_number(row.get("baseline_value")), _fmt_number(row.get("ratio")),
                _fmt_spread(row.get("ratio_spread")), target or "",
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    notes = result.get("notes", [])
    if notes:
        lines.append("Notes:")
        lines.append("")
        lines += [f"- {_cell(n)}" for n in notes]
        lines.append("")
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    info = environment()
    info["processor"] = platform.processor() or platform.machine()
    info["cpu_count"] = os.cpu_count()
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def run_benchmarks(
    names: str | Sequence[str] | None = None,
    quick: bool = False,
    repeats: int = 5,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    threads: int | None = None,
    command: str = "",
    echo: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Run the named benchmarks (all by default) and write their report.

    Writes ``results.json`` (environment, every row) and ``results.md`` (one table
    per benchmark) into ``out_dir`` (default ``runs/bench``, or ``runs/bench-quick``
    with ``quick``) and, with ``echo``, prints the Markdown to stdout.

    Returns:
        the JSON document as a dict.
    """
    positive_int("repeats", repeats)
    dev = resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    selected = resolve_names(names)
    out = Path(out_dir) if out_dir is not None else default_out_dir("bench", quick)
    start = time.perf_counter()
    doc: dict[str, Any] = {
        "command": command,
        "quick": quick,
        "repeats": repeats,
        "environment": _machine(),
        "device": str(dev),
        "benchmarks": [],
        "skipped": [],
    }
    for name in selected:
        module = load_benchmark(name)
        if module is None:
            line = f"{name}: skipped (module {name!r} is not installed in unbottleneck.bench)"
            doc["skipped"].append(line)
            if echo:
                print(line, file=sys.stderr)
            continue
        t0 = time.perf_counter()
        result = module.run(quick=quick, repeats=repeats, progress=progress, device=dev)
        result.setdefault("name", name)
        result["wall_time_s"] = round(time.perf_counter() - t0, 2)
        doc["benchmarks"].append(result)
    doc["wall_time_s"] = round(time.perf_counter() - start, 2)
    if hasattr(os, "getloadavg"):
        doc["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    env = doc["environment"]
    head = [
        "# unbottleneck bench" + (" (quick)" if quick else ""),
        "",
        f"`{command or 'unbottleneck bench'}`: torch {env['torch']}, {env['threads']} threads, "
        f"{env.get('cpu_count')} CPUs ({env.get('processor')}), "
        f"load average {env.get('load_average')} -> {env.get('load_average_end')}, "
        f"{doc['wall_time_s']} s.  Every ratio compares two measurements taken in this run, "
        "interleaved; spreads are [min, max] over the repeats.",
        "",
    ]
    head += [f"- {line}" for line in doc["skipped"]]
    text = "\n".join(head) + "\n" + "\n".join(format_markdown(r) for r in doc["benchmarks"])
    atomic_write_bytes(out / "results.json", json.dumps(_jsonable(doc), indent=2).encode())
    atomic_write_bytes(out / "results.md", text.encode())
    doc["out_dir"] = str(out)
    if echo:
        print(text)
    return doc
