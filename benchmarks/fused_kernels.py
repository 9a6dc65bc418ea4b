"""The structured IAT kernels fused by torch.compile, against the eager kernels, and compiled user models.

    python benchmarks/fused_kernels.py [--threads 2] [--out benchmarks/results/fused-kernels-cpu2.md]
    python benchmarks/fused_kernels.py --quick   # seconds: tiny sizes, one repeat
    python benchmarks/fused_kernels.py --device cuda --out benchmarks/results/<gpu>/fused-kernels.md

Two tables, every ratio measured interleaved in one run (unbottleneck.bench.measure):

1. Linear(d, d) + IAT (M = 4d) forward + backward at batch 1024 with
   implementation="fast" (eager kernel) and "fused" (compiled), over Linear + ReLU, for
   rectangular (select), piecewise-linear q normalized and dual (band) and Fourier
   (FFTs from d M = iat_auto_fft_min_size on, the dense form below), with the first
   fused call's time (compilation; the first call at each later d re-specialises);
2. torch.compile of Linear(d, d) + IAT, which traces each kernel's expression, against
   the same block traced in the dense form (implementation="reference") and a compiled
   Linear + ReLU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from unbottleneck import IAT
from unbottleneck.bench.measure import time_interleaved

#: label -> IAT options
VARIANTS = {
    "rectangular": {"basis": "rectangular"},
    "pl normalized": {"basis": "piecewise_linear", "q": "normalized"},
    "pl dual": {"basis": "piecewise_linear", "q": "dual"},
    "fourier": {"basis": "fourier"},
}


def _step(block: nn.Module, lin: nn.Linear, x: torch.Tensor, gy: torch.Tensor):
    def run() -> None:
        xx = x.requires_grad_()
        torch.autograd.grad(block(xx), [xx, *lin.parameters()], gy)
    return run


def _first_call(fn, device: torch.device) -> float:
    """Seconds of the first call (compilation included), synchronised on CUDA."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _data(batch: int, d: int, device: torch.device):
    return torch.randn(batch, d, device=device), torch.randn(batch, d, device=device), nn.Linear(d, d, device=device)


def block_table(ds: tuple[int, ...], batch: int, repeats: int, device: torch.device) -> list[str]:
    rows = ["| d | IAT | fast (eager kernel) | fused (compiled) | first fused call, s |", "|---|---|---|---|---|"]
    for d in ds:
        x, gy, lin = _data(batch, d, device)
        calls, first = {"relu": _step(nn.Sequential(lin, nn.ReLU()), lin, x, gy)}, {}
        for label, options in VARIANTS.items():
            for impl in ("fast", "fused"):
                fn = _step(nn.Sequential(lin, IAT(d, implementation=impl, device=device, **options)), lin, x, gy)
                first[label, impl] = _first_call(fn, device)
                calls[f"{label}/{impl}"] = fn
        stats = time_interleaved(calls, repeats=repeats, device=device)
        base = stats["relu"].median
        for label in VARIANTS:
            rows.append(f"| {d} | {label} | {stats[f'{label}/fast'].median / base:.2f}x | "
                        f"{stats[f'{label}/fused'].median / base:.2f}x | {first[label, 'fused']:.1f} |")
    return rows


def compiled_table(d: int, batch: int, repeats: int, device: torch.device) -> list[str]:
    x, gy, lin = _data(batch, d, device)
    blocks = {"Linear + ReLU": nn.Sequential(lin, nn.ReLU())}
    for label, options in VARIANTS.items():
        for impl, how in (("fast", "kernel expression"), ("reference", "dense form")):
            blocks[f"Linear + IAT {label}, {how}"] = nn.Sequential(
                lin, IAT(d, implementation=impl, device=device, **options))
    calls, first = {}, {}
    for name, block in blocks.items():
        fn = _step(torch.compile(block), lin, x, gy)
        first[name] = _first_call(fn, device)
        calls[name] = fn
    stats = time_interleaved(calls, repeats=repeats, device=device)
    base = stats["Linear + ReLU"].median
    rows = ["| compiled block | ms | vs compiled Linear + ReLU | first call (compile), s |", "|---|---|---|---|"]
    rows += [f"| {k} | {s.median * 1e3:.2f} | {s.median / base:.2f}x | {first[k]:.1f} |" for k, s in stats.items()]
    return rows


def report(threads: int, ds: tuple[int, ...], compiled_d: int, batch: int, repeats: int,
           device: torch.device) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} threads"
    lines = [f"# Fused IAT kernels (torch {torch.__version__}, {where}, batch {batch}, M = 4d)",
             "", f"Linear + IAT forward + backward over Linear + ReLU (median of {repeats} interleaved samples):",
             "", *block_table(ds, batch, repeats, device), "", f"torch.compile of a whole block, d = {compiled_d}:",
             "", *compiled_table(compiled_d, batch, repeats, device), ""]
    lines.append(f"Wall time of this run: {time.perf_counter() - start:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="Markdown file (default: print only)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.quick:
        text = report(args.threads, (16,), 16, batch=8, repeats=1, device=device)
    else:
        text = report(args.threads, (128, 256, 512, 1024), 512, batch=1024, repeats=5, device=device)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
