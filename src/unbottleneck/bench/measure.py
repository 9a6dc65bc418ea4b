"""Timing and memory measurement shared by the benchmarks.

Timing (:func:`time_interleaved`): every candidate and its baselines are timed in
the same process, *interleaved* -- repeat r runs each function once (one sample
each) before repeat r + 1 starts -- after warm-up calls, so a change of machine
load hits all of them alike.  A sample is the mean of ``number`` back-to-back
calls, with ``number`` calibrated in the warm-up so that a sample lasts at least
``min_sample_s``.  Reported: the median over repeats and the spread as the
[min, max] range; ratios are taken per repeat (candidate_r / baseline_r), and
the median ratio is reported with its own range.

Memory, two measures (each deterministic for a given graph):

* :func:`saved_bytes` -- activation memory kept for backward: the bytes of all
  distinct storages that autograd saves during the forward
  (``torch.autograd.graph.saved_tensors_hooks``), minus those that existed
  before the forward (parameters, buffers, the input batch).  This is what a
  layer adds to a training step's memory for every batch in flight.
* :func:`peak_bytes` -- the peak of newly allocated bytes during a whole
  forward + backward, above what was allocated when it started.  On CUDA:
  ``torch.cuda.max_memory_allocated``.  On CPU (which keeps no such counter) the
  allocation events of ``torch.profiler`` (``profile_memory=True``), whose running
  total is the allocator's live byte count; None if the profiler is unavailable.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Stats:
    """Summary of repeated measurements."""

    median: float
    low: float
    high: float
    samples: list[float]

    @staticmethod
    def of(samples: Sequence[float]) -> Stats:
        if not samples:
            raise ValueError("no samples")
        xs = [float(x) for x in samples]
        return Stats(statistics.median(xs), min(xs), max(xs), xs)

    @property
    def spread(self) -> list[float]:
        return [self.low, self.high]

    def scaled(self, factor: float) -> Stats:
        """The same measurements in other units (e.g. seconds -> milliseconds)."""
        return Stats.of([x * factor for x in self.samples])


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 2,
    min_sample_s: float = 0.02,
    device: torch.device | None = None,
) -> dict[str, Stats]:
    """Seconds per call of each function, measured interleaved (see the module doc).

    Args:
        fns: name -> zero-argument callable (e.g. one forward + backward).
        repeats: samples per function (>= 1).
        warmup: untimed calls per function before calibration.
        min_sample_s: lower bound of one sample's duration (sets the calls per sample).
        device: synchronised around every sample when it is a CUDA device.

    Returns:
        name -> :class:`Stats` of seconds per call.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    number: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 0)):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        once = max(time.perf_counter() - start, 1e-7)
        number[name] = max(1, math.ceil(min_sample_s / once))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(number[name]):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - start) / number[name])
    return {name: Stats.of(xs) for name, xs in samples.items()}


def ratio_stats(num: Stats, den: Stats) -> Stats:
    """Per-repeat ratios of two interleaved measurements."""
    return Stats.of([a / b for a, b in zip(num.samples, den.samples, strict=True)])


def _storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


def saved_bytes(fn: Callable[[], Any], existing: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs.

    Storages of ``existing`` tensors (parameters, buffers, inputs) are not counted:
    they are held anyway.  Each storage counts once, however many views of it are
    saved.  The graph built by ``fn`` is released before returning.
    """
    skip = _storages(existing)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in skip and ptr != 0:
            seen[ptr] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


@contextlib.contextmanager
def _quiet_profiler() -> Iterator[None]:
    """Silence the profiler backend's ``USDT: profiler_start/stop`` lines on file descriptor 2.

    They are written by C++ code straight to the descriptor, past ``sys.stderr``; the
    benchmark tables are printed to stdout, which is left alone.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _profiler_peak(fn: Callable[[], Any]) -> int | None:
    """Peak of the live-bytes running total during ``fn`` from profiler allocation events."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        tree = prof.profiler.kineto_results.experimental_event_tree()
    except Exception:  # the profiler is optional and its event tree API is experimental
        return None
    events: list[tuple[int, int]] = []
    stack = list(tree)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        extra = getattr(node, "extra_fields", None)
        if type(extra).__name__ == "_ExtraFields_Allocation" and str(extra.device) == "cpu":
            events.append((node.start_time_ns, int(extra.alloc_size)))
    if not events:
        return 0
    events.sort()
    live = peak = 0
    for _, size in events:
        live += size
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int | None:
    """Peak bytes allocated above the starting level while ``fn`` runs (see module doc)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return _profiler_peak(fn)


def make_row(
    case: str,
    metric: str,
    unit: str,
    value: Stats | float | None,
    baseline: str,
    baseline_value: Stats | float | None,
    ratio: Stats | float | None = None,
    target: str | None = None,
    meets: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One result row in the shared schema.

    ``value``/``baseline_value`` are medians (with ``spread``/``baseline_spread`` the
    [min, max] range over repeats when given as :class:`Stats`); ``ratio`` is
    value / baseline (the median of per-repeat ratios when given as Stats, else
    the ratio of the two values).  ``target`` is a goal on the ratio, ``"<= x"`` or
    ``">= x"``; ``meets`` (whether the median ratio satisfies it) is derived from it
    unless given.
    """

    def med(x: Stats | float | None) -> float | None:
        return x.median if isinstance(x, Stats) else (None if x is None else float(x))

    def rng(x: Stats | float | None) -> list[float] | None:
        return x.spread if isinstance(x, Stats) else None

    v, b = med(value), med(baseline_value)
    if ratio is None and v is not None and b not in (None, 0.0):
        ratio = v / b
    row = {
        "case": case,
        "metric": metric,
        "unit": unit,
        "value": v,
        "spread": rng(value),
        "baseline": baseline,
        "baseline_value": b,
        "baseline_spread": rng(baseline_value),
        "ratio": med(ratio),
        "ratio_spread": rng(ratio),
    }
    if target is not None:
        if meets is None and row["ratio"] is not None:
            op, bound = target.split()
            meets = row["ratio"] <= float(bound) if op == "<=" else row["ratio"] >= float(bound)
        row["target"] = target
        row["meets"] = meets
    row.update(extra)
    return row


def profile_events(fn: Callable[[], Any], calls: int = 1, by_shape: bool = False) -> list:
    """CPU profiler events of ``calls`` runs of ``fn``, averaged per operator (and per input
    shape when ``by_shape``); an empty list if the profiler is unavailable."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with _quiet_profiler(), profile(activities=[ProfilerActivity.CPU],
                                        record_shapes=by_shape) as prof:
            for _ in range(calls):
                fn()
        return list(prof.key_averages(group_by_input_shape=by_shape))
    except Exception:  # optional diagnostics
        return []


def profile_top(fn: Callable[[], Any], calls: int = 3, top: int = 6) -> list[tuple[str, float, int]]:
    """The ``top`` operators by self CPU time over ``calls`` runs of ``fn``.

    Returns ``(name, milliseconds per run, calls per run)`` tuples, largest first; an
    empty list if the profiler is unavailable.  Used to explain missed targets.
    """
    events = profile_events(fn, calls)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [(e.key, e.self_cpu_time_total / 1000.0 / calls, round(e.count / calls)) for e in rows]


def format_profile(entries: list[tuple[str, float, int]]) -> str:
    """``op 1.23 ms (x4), ...`` from :func:`profile_top`."""
    return ", ".join(f"{name} {ms:.2f} ms (x{count})" for name, ms, count in entries) or "n/a"
