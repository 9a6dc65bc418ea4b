"""The band kernel fused by torch.compile, against the eager kernel, and a compiled user model.

    python benchmarks/fused_band.py [--threads 2] [--out benchmarks/results/fused-band-cpu2.md]

Two tables, every ratio measured interleaved in one run (unbottleneck.bench.measure):

1. Linear(d, d) + IAT (piecewise-linear, M = 4d, q normalized and dual) forward + backward
   at batch 1024 with implementation="fast" (eager band kernel) and "fused" (compiled),
   over Linear + ReLU;
2. torch.compile of Linear(512, 512) + IAT (q normalized), which now traces the band
   expression, against the same block with the dense IAT form (what compile traced before)
   and a compiled Linear + ReLU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from unbottleneck import IAT
from unbottleneck.bench.measure import time_interleaved


def _median(stats) -> float:
    return stats.median if hasattr(stats, "median") else stats["median"]


def _step(block: nn.Module, lin: nn.Linear, x: torch.Tensor, gy: torch.Tensor):
    def run() -> None:
        xx = x.requires_grad_()
        torch.autograd.grad(block(xx), [xx, *lin.parameters()], gy)
    return run


def block_table(ds: tuple[int, ...], batch: int = 1024) -> list[str]:
    rows = ["| d | q | fast (eager band) | fused (compiled) | first fused call, s |", "|---|---|---|---|---|"]
    for d in ds:
        x, gy, lin = torch.randn(batch, d), torch.randn(batch, d), nn.Linear(d, d)
        calls, first = {"relu": _step(nn.Sequential(lin, nn.ReLU()), lin, x, gy)}, {}
        for q in ("normalized", "dual"):
            for impl in ("fast", "fused"):
                fn = _step(nn.Sequential(lin, IAT(d, basis="piecewise_linear", q=q, implementation=impl)), lin, x, gy)
                start = time.perf_counter()
                fn()
                first[q, impl] = time.perf_counter() - start
                calls[f"{q}/{impl}"] = fn
        stats = time_interleaved(calls, repeats=5)
        base = _median(stats["relu"])
        for q in ("normalized", "dual"):
            rows.append(f"| {d} | {q} | {_median(stats[f'{q}/fast']) / base:.2f}x | "
                        f"{_median(stats[f'{q}/fused']) / base:.2f}x | {first[q, 'fused']:.1f} |")
    return rows


def compiled_table(d: int = 512, batch: int = 1024) -> list[str]:
    x, gy, lin = torch.randn(batch, d), torch.randn(batch, d), nn.Linear(d, d)
    blocks = {
        "compiled Linear + IAT (band expression, now)": nn.Sequential(lin, IAT(d, q="normalized")),
        "compiled Linear + IAT (dense form, before)": nn.Sequential(
            lin, IAT(d, q="normalized", implementation="reference")),
        "compiled Linear + ReLU": nn.Sequential(lin, nn.ReLU()),
    }
    calls = {}
    for name, block in blocks.items():
        fn = _step(torch.compile(block), lin, x, gy)
        fn()
        calls[name] = fn
    stats = time_interleaved(calls, repeats=5)
    base = _median(stats["compiled Linear + ReLU"])
    rows = ["| block | ms | vs compiled Linear + ReLU |", "|---|---|---|"]
    rows += [f"| {k} | {_median(s) * 1e3:.2f} | {_median(s) / base:.2f}x |" for k, s in stats.items()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/fused-band-cpu2.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [f"# Fused band kernel (torch {torch.__version__}, {args.threads} threads, batch 1024, M = 4d)",
             "", "Linear + IAT forward + backward over Linear + ReLU (median of 5 interleaved samples):", "",
             *block_table((128, 256, 512, 1024)), "", "torch.compile of a whole block, d = 512:", "",
             *compiled_table(), ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
