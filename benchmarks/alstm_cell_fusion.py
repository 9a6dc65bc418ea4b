"""How much the aLSTM's per-step element-wise work could gain from fusion (torch.compile).

    python benchmarks/alstm_cell_fusion.py [--threads 2] [--out benchmarks/results/alstm-cell-fusion-cpu2.md]
    python benchmarks/alstm_cell_fusion.py --quick

The fused aLSTM path (unbottleneck.adaptive.alstm_fused) runs, per layer and step, the gate
activations and the cell update as a handful of eager element-wise ops into preallocated
buffers (``_activate`` + ``_cell_forward``).  Here the same work at the PTB sizes
(batch 20, hidden 1150 and 400) is timed eagerly and as one compiled function
(torch.compile, inductor), both with the same inputs and outputs, interleaved; the
saving per step times the steps of a BPTT-70 call gives an upper bound on what fusing the
forward's cell work could save, next to the measured time of a whole fused call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from unbottleneck.adaptive import ALSTM
from unbottleneck.adaptive.alstm_fused import _activate, _cell_forward
from unbottleneck.bench.measure import time_interleaved


def _cell(pre: torch.Tensor, c_prev: torch.Tensor, size: int):
    """The same cell as one expression: (B, 4S), (B, S) -> act, c, tanh(c), h."""
    i, f = pre[:, :size].sigmoid(), pre[:, size:2 * size].sigmoid()
    g, o = pre[:, 2 * size:3 * size].tanh(), pre[:, 3 * size:].sigmoid()
    c = f * c_prev + i * g
    tc = c.tanh()
    return torch.cat([i, f, g, o], 1), c, tc, o * tc


def cell_rows(batch: int, sizes: tuple[int, ...], steps: int, repeats: int) -> tuple[list[str], float]:
    rows = ["| hidden S | eager cell, us/step | compiled cell, us/step | saving per BPTT call, ms |",
            "|---|---|---|---|"]
    total = 0.0
    compiled = torch.compile(_cell, dynamic=False)
    for S in sizes:
        pre, c_prev = torch.randn(batch, 4 * S), torch.randn(batch, S)
        act, c, tc, h = torch.empty(batch, 4 * S), torch.empty(batch, S), torch.empty(batch, S), torch.empty(batch, S)

        def eager(pre=pre, c_prev=c_prev, act=act, c=c, tc=tc, h=h, S=S):
            for _ in range(steps):
                _activate(pre, act, S)
                _cell_forward(act, c_prev, c, tc, h, S)

        def fused(pre=pre, c_prev=c_prev, S=S):
            for _ in range(steps):
                compiled(pre, c_prev, S)

        fused()  # compile
        stats = time_interleaved({"eager": eager, "fused": fused}, repeats=repeats)
        e, f = stats["eager"].median / steps, stats["fused"].median / steps
        total += (e - f) * steps
        rows.append(f"| {S} | {e * 1e6:.1f} | {f * 1e6:.1f} | {(e - f) * steps * 1e3:.2f} |")
    return rows, total


def alstm_call(batch: int, steps: int, repeats: int, sizes: tuple[int, int, int, int]) -> float:
    n, H, K, out = sizes
    model = ALSTM(n, H, K, num_layers=2, output_size=out)
    x = torch.randn(steps, batch, n, requires_grad=True)

    def call() -> None:
        y, _ = model(x)
        torch.autograd.grad(y.sum(), [x, *model.parameters()])

    call()
    return time_interleaved({"call": call}, repeats=repeats)["call"].median


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.perf_counter()
    if args.quick:
        batch, steps, repeats, sizes = 4, 5, 1, (16, 32, 8, 16)
    else:
        batch, steps, repeats, sizes = 20, 70, 5, (400, 1150, 100, 400)
    # a 2-layer stack: layer 1 has hidden H, layer 2 hidden = output size
    rows, saving = cell_rows(batch, (sizes[1], sizes[3]), steps, repeats)
    call = alstm_call(batch, steps, repeats, sizes)
    text = "\n".join([
        f"# aLSTM per-step cell work, eager vs torch.compile (torch {torch.__version__}, {args.threads} threads)",
        "", f"Batch {batch}, BPTT {steps}, ALSTM{sizes} (2 layers): forward cell work per step "
        f"(gate activations + cell update), median of {repeats} interleaved samples.", "", *rows, "",
        f"A whole fused aLSTM call (forward + backward): {call * 1e3:.1f} ms; fusing the forward's cell work "
        f"would save at most {saving * 1e3:.2f} ms of it ({100 * saving / call:.1f} %).",
        "", f"Wall time of this run: {time.perf_counter() - start:.0f} s.", ""])
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
