"""GDNN against a ReLU MLP of equal parameter count: time and steps to a target loss.

Task: fit the 1-D high-frequency target ``sin(2 pi x) + 0.5 sin(8 pi x) +
0.25 sin(20 pi x)`` (the ``iat-fit`` experiment's "sines") on 256 random points of
[-1, 1], full-batch Adam (lr 3e-3), MSE.  Both networks are
Linear(1, w) -> act -> Linear(w, w) -> act -> Linear(w, 1) with the same parameter
count (IATs have none) and He-style init with the activation's own gain; the
GDNN's activations are ``IAT(w, "piecewise_linear", num_points=4w)`` on its
production path.  For every seed (= repeat, at most 2) both train for at most
``max_steps`` steps, interleaved (MLP then GDNN); a target counts as reached at
the first step whose training loss is at or below it.  Reported: median steps and
wall-clock seconds to each target over the seeds that reached it, and the time
per step.
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from ..experiments.common import count_parameters, make_mlp
from ..iat import GDNN
from .measure import Stats, make_row


def target_fn(x: torch.Tensor) -> torch.Tensor:
    """The "sines" target of ``iat-fit``."""
    return (torch.sin(2 * math.pi * x) + 0.5 * torch.sin(8 * math.pi * x)
            + 0.25 * torch.sin(20 * math.pi * x))


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, targets: tuple[float, ...],
           max_steps: int, lr: float) -> dict:
    """Full-batch Adam; first step (1-based) and time at which each target is reached."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    reached: dict[float, tuple[int, float]] = {}
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(1, max_steps + 1):
        loss = torch.mean((model(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        for t in targets:
            if t not in reached and loss_value <= t:
                reached[t] = (step, time.perf_counter() - start)
        if len(reached) == len(targets):
            break
    elapsed = time.perf_counter() - start
    return {"reached": reached, "final_loss": loss_value, "steps": step,
            "time_per_step": elapsed / step}


def run(quick: bool = False, repeats: int = 5, progress: bool = True,
        device: torch.device | None = None) -> dict:
    """Benchmark GDNN vs a ReLU MLP (see the module doc); returns the shared result dict."""
    from tqdm.auto import tqdm

    if quick:
        width, n_points, max_steps, seeds, targets = 16, 64, 60, 1, (0.5, 0.3)
    else:
        width, n_points, max_steps, seeds, targets = 128, 256, 2000, min(repeats, 2), (0.1, 0.05)
    lr, factor = 3e-3, 4
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs: dict[str, list[dict]] = {"mlp": [], "gdnn": []}
    kernel = "?"
    for seed in tqdm(range(seeds), desc="gdnn", disable=not progress, leave=False):
        gen = torch.Generator().manual_seed(seed)
        x = (torch.rand(n_points, 1, generator=gen) * 2 - 1).to(device)
        y = target_fn(x)
        torch.manual_seed(seed)
        mlp = make_mlp(1, width, 1, depth=2, activation="relu").to(device)
        torch.manual_seed(seed)
        gdnn = GDNN(1, width, 1, depth=2, basis="piecewise_linear", num_points=factor * width,
                    device=device)
        if count_parameters(mlp) != count_parameters(gdnn):
            raise AssertionError("GDNN and MLP must have equal parameter counts")
        act = gdnn.activations[0]
        kernel = act.kernel if act.use_fast else "dense"
        runs["mlp"].append(_train(mlp, x, y, targets, max_steps, lr))
        runs["gdnn"].append(_train(gdnn, x, y, targets, max_steps, lr))

    case = f"width {width}, depth 2, {n_points} points, <= {max_steps} steps"
    gcase = f"GDNN piecewise_linear M={factor * width} [{kernel}] vs ReLU MLP, {case}"
    rows = []
    for t in targets:
        per = {}
        for name, rs in runs.items():
            hits = [r["reached"][t] for r in rs if t in r["reached"]]
            per[name] = {
                "steps": Stats.of([h[0] for h in hits]) if hits else None,
                "time": Stats.of([h[1] for h in hits]) if hits else None,
                "count": f"{len(hits)}/{len(rs)}",
            }
        g, m = per["gdnn"], per["mlp"]
        for metric, unit in (("steps", "steps"), ("time", "s")):
            rows.append(make_row(
                gcase, f"{metric} to train MSE <= {t}", unit, g[metric], "ReLU MLP (equal params)",
                m[metric], reached=g["count"], baseline_reached=m["count"],
            ))
    step_g = Stats.of([r["time_per_step"] * 1e3 for r in runs["gdnn"]])
    step_m = Stats.of([r["time_per_step"] * 1e3 for r in runs["mlp"]])
    rows.append(make_row(gcase, "time per training step", "ms", step_g, "ReLU MLP (equal params)",
                         step_m, parameters=count_parameters(gdnn)))
    final = {k: statistics.median(r["final_loss"] for r in rs) for k, rs in runs.items()}
    notes = [
        f"Final training MSE (median over {seeds} seed(s)): GDNN {final['gdnn']:.4g}, "
        f"ReLU MLP {final['mlp']:.4g}; a run stops once it reaches every target.",
        "A missing value means no seed reached that target within the step budget; the "
        "'reached' fields of the JSON rows count the seeds that did.",
        f"device {device}, {torch.get_num_threads()} threads, full-batch Adam lr {lr}; "
        "repeats = seeds (at most 2), each training run once.",
    ]
    return {"name": "gdnn", "rows": rows, "notes": notes}
