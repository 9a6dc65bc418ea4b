"""IAT-ReLU: the production path against its dense reference, ``nn.Linear`` and Linear+ReLU.

For every basis (rectangular, piecewise-linear with the default dual output
basis and with the local ``q="normalized"``, Fourier), ``d`` in {128, 512} and
``M`` in {2d, 4d, 8d}, batch 1024, float32, this measures

* forward + backward time of ``IAT(d, basis, num_points=M, q=q)`` (the default
  ``implementation="auto"``: whatever a user gets) against (a) the same layer's
  dense reference path and (b) the adjacent ``nn.Linear(d, d)``; then a training
  block Linear -> IAT against Linear -> ReLU;
* activation memory saved for backward and peak memory during forward + backward
  of the block Linear -> IAT against Linear -> ReLU (see :mod:`.measure`).

All times are for ``torch.autograd.grad`` of the output against a fixed
upstream gradient (w.r.t. the layer input, and the Linear's parameters), so no
gradient accumulation copies enter the comparison.

Targets (for the *local* configurations at d = 512, M = 4d: rectangular and
piecewise-linear with ``q="normalized"``): time <= 0.5 x the Linear's, >= 4 x
faster than the dense reference (ratio <= 0.25), peak memory <= 1.5 x
Linear+ReLU's.  The piecewise-linear default ``q="dual"`` has a *dense* output
basis (the dual of a tridiagonal Gram matrix); it is reported beside them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..iat import IAT
from .measure import (
    format_profile,
    make_row,
    peak_bytes,
    profile_top,
    ratio_stats,
    saved_bytes,
    time_interleaved,
)

CASES = (
    ("rectangular", "dual"),
    ("piecewise_linear", "dual"),
    ("piecewise_linear", "normalized"),
    ("fourier", "dual"),
)
LOCAL = {("rectangular", "dual"), ("piecewise_linear", "normalized")}
TARGET_D, TARGET_FACTOR = 512, 4
TIME_VS_LINEAR, TIME_VS_REFERENCE, PEAK_VS_RELU = 0.5, 0.25, 1.5
MIB = 2.0**20


def _configs(quick: bool) -> tuple[list[tuple[str, str, int, int]], int]:
    if quick:
        return [(b, q, 16, 4) for b, q in CASES], 64
    return [(b, q, d, f) for d in (128, 512) for f in (2, 4, 8) for b, q in CASES], 1024


def run(quick: bool = False, repeats: int = 5, progress: bool = True,
        device: torch.device | None = None) -> dict:
    """Benchmark IAT-ReLU (see the module doc); returns the shared result dict."""
    from tqdm.auto import tqdm

    configs, batch = _configs(quick)
    repeats = min(repeats, 2) if quick else repeats
    warmup, min_sample = (1, 0.002) if quick else (2, 0.05)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[dict] = []
    notes: list[str] = []
    for basis, q, d, factor in tqdm(configs, desc="iat", disable=not progress, leave=False):
        target = (basis, q) in LOCAL and d == TARGET_D and factor == TARGET_FACTOR and not quick
        case_rows, case_notes = _measure_case(
            basis, q, d, factor * d, batch, device, repeats, warmup, min_sample, target
        )
        rows += case_rows
        notes += case_notes
    notes += [
        "Production path = IAT(...) with implementation='auto' (the kernel it runs is in "
        "brackets: select = element-wise, band = per-slot element-wise interpolation and "
        "accumulation, fourier = real FFTs, dense = the reference matmuls, chosen below "
        "the size thresholds).",
        "q='dual' of the piecewise-linear basis is dense (the dual of a tridiagonal Gram "
        "matrix); the band kernel applies it as a tridiagonal solve by two log-depth scans, "
        "which costs a few passes over (N, d). Any invertible recombination of q is absorbed "
        "by the next Linear layer, so q='normalized' (local) is the like-for-like local case.",
        "saved for backward: activation bytes autograd keeps (inputs and parameters "
        "excluded); reference_value in the JSON is the dense reference path's figure.",
        "peak memory: peak of newly allocated bytes during forward+backward of the block "
        + ("(torch.cuda.max_memory_allocated)." if device.type == "cuda"
           else "(torch.profiler allocation events; CPU has no allocator counter)."),
        f"device {device}, {torch.get_num_threads()} threads, batch {batch}, float32, "
        f"{repeats} interleaved repeats after {warmup} warm-up calls.",
    ]
    return {"name": "iat", "rows": rows, "notes": notes}


def _measure_case(
    basis: str, q: str, d: int, M: int, batch: int, device: torch.device,
    repeats: int, warmup: int, min_sample: float, target: bool,
) -> tuple[list[dict], list[str]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    iat = IAT(d, basis=basis, num_points=M, q=q, device=device)
    ref = IAT(d, basis=basis, num_points=M, q=q, implementation="reference", device=device)
    lin = nn.Linear(d, d, device=device)
    kernel = iat.kernel if iat.use_fast else "dense"
    case = f"{basis} q={q} d={d} M={M} [{kernel}]"
    z = torch.randn(batch, d, generator=gen).to(device).requires_grad_()
    x = torch.randn(batch, d, generator=gen).to(device).requires_grad_()
    g = torch.randn(batch, d, generator=gen).to(device)
    params = (x, lin.weight, lin.bias)

    def alone(act):  # the layer by itself, gradient w.r.t. its input
        return lambda: torch.autograd.grad(act(z), (z,), g)

    def block(act):  # Linear -> act, gradients w.r.t. the input and the Linear's parameters
        return lambda: torch.autograd.grad(act(lin(x)), params, g)

    times = time_interleaved(
        {
            "iat": alone(iat),
            "reference": alone(ref),
            "linear": lambda: torch.autograd.grad(lin(x), params, g),
            "linear+iat": block(iat),
            "linear+relu": block(torch.relu),
        },
        repeats=repeats, warmup=warmup, min_sample_s=min_sample, device=device,
    )
    ms = {k: v.scaled(1e3) for k, v in times.items()}
    r_ref = ratio_stats(times["iat"], times["reference"])
    r_lin = ratio_stats(times["iat"], times["linear"])
    rows = [
        make_row(
            case, "fwd+bwd time", "ms", ms["iat"], "dense reference", ms["reference"], r_ref,
            target=f"<= {TIME_VS_REFERENCE}" if target else None, kernel=kernel,
        ),
        make_row(
            case, "fwd+bwd time", "ms", ms["iat"], f"nn.Linear({d},{d})", ms["linear"], r_lin,
            target=f"<= {TIME_VS_LINEAR}" if target else None, kernel=kernel,
        ),
        make_row(
            case, "block fwd+bwd time", "ms", ms["linear+iat"], "Linear+ReLU", ms["linear+relu"],
            ratio_stats(times["linear+iat"], times["linear+relu"]), kernel=kernel,
        ),
    ]
    notes: list[str] = []

    existing = [x, *lin.parameters(), *iat.buffers(), *ref.buffers()]
    saved = {
        name: saved_bytes(lambda act=act: act(lin(x)), existing) / MIB
        for name, act in (("iat", iat), ("relu", torch.relu), ("reference", ref))
    }
    rows.append(make_row(
        case, "saved for backward", "MiB", saved["iat"], "Linear+ReLU", saved["relu"],
        kernel=kernel, reference_value=saved["reference"],
    ))
    peak = {name: peak_bytes(block(act), device) for name, act in
            (("iat", iat), ("relu", torch.relu), ("reference", ref))}
    if peak["iat"] is not None and peak["relu"]:
        rows.append(make_row(
            case, "peak memory fwd+bwd", "MiB", peak["iat"] / MIB, "Linear+ReLU",
            peak["relu"] / MIB, peak["iat"] / peak["relu"],
            target=f"<= {PEAK_VS_RELU}" if target else None, kernel=kernel,
            reference_value=None if peak["reference"] is None else peak["reference"] / MIB,
        ))
    elif target:
        notes.append(f"{case}: peak memory not measured (torch.profiler unavailable)")

    missed = [r for r in rows if r.get("meets") is False]
    if missed:
        what = ", ".join(f"{r['metric']} vs {r['baseline']} = {r['ratio']:.3g}" for r in missed)
        notes.append(
            f"{case}: missed {what}. IAT fwd+bwd profile (self CPU per call): "
            f"{format_profile(profile_top(alone(iat), calls=3))}"
        )
    return rows, notes
