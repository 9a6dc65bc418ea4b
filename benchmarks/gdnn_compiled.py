"""GDNN training steps eager and under torch.compile, against the equal-parameter ReLU MLP.

    python benchmarks/gdnn_compiled.py [--threads 2] [--out benchmarks/results/gdnn-compiled-cpu2.md]

The ``gdnn`` benchmark of ``unbottleneck bench`` times eager steps (width 128, piecewise-linear
IATs, M = 4 x width, 256 points, full-batch Adam).  Here one step of each model is timed
eagerly and compiled (the compiled GDNN traces the band expression, which inductor fuses
with the Linear layers), interleaved, median of 5 samples.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from unbottleneck import GDNN
from unbottleneck.bench.measure import time_interleaved
from unbottleneck.experiments.common import make_mlp


def _stepper(model, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step() -> None:
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return step


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 256)[:, None]
    y = torch.sin(20 * x)

    def models():
        return (make_mlp(1, args.width, 1, depth=2, activation="relu"),
                GDNN(1, args.width, 1, depth=2, basis="piecewise_linear", num_points=4 * args.width))

    (mlp, gdnn), (mlp_c, gdnn_c) = models(), models()
    calls = {"ReLU MLP": _stepper(mlp, x, y), "GDNN": _stepper(gdnn, x, y),
             "ReLU MLP, compiled": _stepper(torch.compile(mlp_c), x, y),
             "GDNN, compiled": _stepper(torch.compile(gdnn_c), x, y)}
    first = {}
    for name in ("ReLU MLP, compiled", "GDNN, compiled"):
        start = time.perf_counter()
        calls[name]()
        first[name] = time.perf_counter() - start
    stats = time_interleaved(calls, repeats=5)
    ms = {k: v.median * 1e3 for k, v in stats.items()}
    base = ms["ReLU MLP"]
    rows = [f"| {k} | {v:.3f} | {v / base:.2f}x | {first.get(k, 0.0):.1f} |" for k, v in ms.items()]
    text = "\n".join([
        f"# GDNN steps, eager and compiled (torch {torch.__version__}, {args.threads} threads, width {args.width})",
        "", "| model | ms / training step | vs eager ReLU MLP | first step (compile), s |", "|---|---|---|---|",
        *rows, "", f"Compiled GDNN over compiled ReLU MLP: {ms['GDNN, compiled'] / ms['ReLU MLP, compiled']:.2f}x.", ""])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
