"""``iat-fit``: fitting high-frequency targets with ReLU vs IAT-ReLU (seed experiments a, b, e).

Same architecture, initialisation scale, optimiser (full-batch Adam) and step
budget for every activation; only the activation layer changes.  IATs add no
parameters, so parameter counts are equal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..training import seed_everything
from .common import (
    check_activation,
    count_parameters,
    fmt,
    make_mlp,
    markdown_table,
    mean_std,
    plural,
    require_discretisable,
    require_lr,
    require_nonempty,
    require_positive,
    roughness,
    total_variation,
)
from .runner import RunContext, register

TARGETS_1D: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # three octaves: the 10-period component is what a small ReLU net smooths away
    "sines": lambda x: torch.sin(2 * math.pi * x) + 0.5 * torch.sin(8 * math.pi * x)
    + 0.25 * torch.sin(20 * math.pi * x),
    # frequency grows linearly to 12 periods per unit at the ends
    "chirp": lambda x: torch.sin(12 * math.pi * x * x),
}
TARGETS_2D: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sin2d": lambda x: torch.sin(4 * math.pi * x[:, 0]) * torch.cos(4 * math.pi * x[:, 1]),
}
TARGETS = tuple(TARGETS_1D) + tuple(TARGETS_2D)


@dataclass
class IATFitConfig:
    targets: tuple[str, ...] = ("sines", "chirp", "sin2d")
    activations: tuple[str, ...] = ("relu", "iat-rectangular", "iat-piecewise_linear", "iat-fourier")
    width: int = 64
    depth: int = 2
    points_factor: int = 4  # M = points_factor * width
    n_train_1d: int = 256
    n_train_2d: int = 1024
    grid_1d: int = 2001
    grid_2d: int = 64
    steps: int = 2000
    lr: float = 3e-3
    eval_every: int = 50
    seeds: int = 3
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        require_nonempty(self, "targets", "activations")
        require_lr(self)
        for t in self.targets:
            if t not in TARGETS:
                raise ValueError(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
        for a in self.activations:
            check_activation(a)
        require_positive(self, "width", "depth", "points_factor", "steps", "seeds", "eval_every")
        require_discretisable(self.activations, [self.width], [self.points_factor])


def make_data(target: str, cfg: IATFitConfig, gen: torch.Generator):
    """Train points (uniform random) and a dense test grid; x in [-1, 1]^dim."""
    if target in TARGETS_1D:
        fn = TARGETS_1D[target]
        x_train = torch.rand(cfg.n_train_1d, 1, generator=gen) * 2 - 1
        x_test = torch.linspace(-1, 1, cfg.grid_1d)[:, None]
        return x_train, fn(x_train[:, 0])[:, None], x_test, fn(x_test[:, 0])[:, None]
    fn = TARGETS_2D[target]
    x_train = torch.rand(cfg.n_train_2d, 2, generator=gen) * 2 - 1
    g = torch.linspace(-1, 1, cfg.grid_2d)
    x_test = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return x_train, fn(x_train)[:, None], x_test, fn(x_test)[:, None]


def smoothness(pred: torch.Tensor, target: str, cfg: IATFitConfig) -> float:
    """RMS second derivative of the fit on the test grid (1-D), RMS Laplacian (2-D)."""
    if target in TARGETS_1D:
        return roughness(pred[:, 0], 2.0 / (cfg.grid_1d - 1))
    n = cfg.grid_2d
    h = 2.0 / (n - 1)
    u = pred[:, 0].reshape(n, n)
    lap = (u[2:, 1:-1] + u[:-2, 1:-1] + u[1:-1, 2:] + u[1:-1, :-2] - 4 * u[1:-1, 1:-1]) / h**2
    return float(lap.pow(2).mean().sqrt())


#: A loss spike: a step whose training loss exceeds SPIKE_FACTOR x the lowest loss of the
#: steps before it (the first SPIKE_WARMUP share of training, where the loss still falls
#: from its initial value, is not counted).  Fixed before the iat-points runs that use it.
SPIKE_FACTOR = 2.0
SPIKE_WARMUP = 0.1


def stability(losses: list[float], grad_norms: list[float]) -> dict[str, float]:
    """Per-run training-stability measures from the per-step loss and gradient norm.

    ``spikes``: count of loss spikes (see :data:`SPIKE_FACTOR`); ``grad_spread``: std of
    log10(gradient norm) over the second half of training; ``diverged``: 1 if a loss was
    non-finite or the final loss is above the first, else 0.
    """
    loss = torch.tensor(losses, dtype=torch.float64)
    finite = bool(torch.isfinite(loss).all())
    best = torch.cummin(loss, 0).values
    start = max(1, int(SPIKE_WARMUP * len(losses)))
    spikes = int((loss[start:] > SPIKE_FACTOR * best[start - 1:-1]).sum()) if finite else len(losses)
    g = torch.tensor(grad_norms[len(grad_norms) // 2:], dtype=torch.float64).clamp(min=1e-30)
    spread = float(g.log10().std()) if g.numel() > 1 and bool(torch.isfinite(g).all()) else float("nan")
    diverged = (not finite) or losses[-1] > losses[0]
    return {"spikes": float(spikes), "grad_spread": spread, "diverged": float(diverged)}


def train_one(target, activation, seed, cfg: IATFitConfig, bar):
    gen = seed_everything(cfg.seed * 1000 + seed)
    x_tr, y_tr, x_te, y_te = make_data(target, cfg, gen)
    dev = torch.device(cfg.device)
    x_tr, y_tr, x_te, y_te = (t.to(dev) for t in (x_tr, y_tr, x_te, y_te))
    torch.manual_seed(cfg.seed * 1000 + seed)  # same init draw for every activation
    model = make_mlp(x_tr.shape[1], cfg.width, 1, cfg.depth, activation, cfg.points_factor).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve, losses, grad_norms = [], [], []
    start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((model(x_tr) - y_tr) ** 2)
        loss.backward()
        losses.append(loss.item())
        grad_norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                test = float(torch.mean((model(x_te) - y_te) ** 2))
            curve.append({"step": step, "train_mse": loss.item(), "test_mse": test})
            bar.update(cfg.eval_every if step % cfg.eval_every == 0 else step % cfg.eval_every)
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        pred = model(x_te).cpu()
        train_mse = float(torch.mean((model(x_tr) - y_tr) ** 2))
    return {
        "curve": curve,
        "train_mse": train_mse,
        "test_mse": curve[-1]["test_mse"],
        "smoothness": smoothness(pred, target, cfg),
        "tv_ratio": total_variation(pred[:, 0]) / total_variation(y_te[:, 0].cpu())
        if target in TARGETS_1D else float("nan"),
        "ms_per_step": 1000 * elapsed / cfg.steps,
        **stability(losses, grad_norms),
        "loss_trace": losses,
        "params": count_parameters(model),
        "pred": pred,
        "x_test": x_te.cpu(),
        "y_test": y_te.cpu(),
    }


@register(
    "iat-fit",
    IATFitConfig,
    quick={"targets": ("sines", "sin2d"), "width": 32, "steps": 150, "seeds": 1,
           "eval_every": 25, "n_train_2d": 256, "grid_2d": 32, "grid_1d": 501},
    summary="high-frequency function fitting: ReLU vs IAT-ReLU (each basis), same budget",
)
def run(cfg: IATFitConfig, ctx: RunContext) -> dict:
    import matplotlib.pyplot as plt

    runs: dict[tuple[str, str], list[dict]] = {}
    total = len(cfg.targets) * len(cfg.activations) * cfg.seeds * cfg.steps
    with ctx.bar(total, "iat-fit") as bar:
        for target in cfg.targets:
            for act in cfg.activations:
                bar.set_postfix_str(f"{target}/{act}")
                runs[target, act] = [train_one(target, act, s, cfg, bar) for s in range(cfg.seeds)]

    rows, summary = [], {}
    for (target, act), rs in runs.items():
        for s, r in enumerate(rs):
            rows += [{"target": target, "activation": act, "seed": s, **c} for c in r["curve"]]
        summary.setdefault(target, {})[act] = {
            "test_mse": mean_std(r["test_mse"] for r in rs),
            "train_mse": mean_std(r["train_mse"] for r in rs),
            "smoothness": mean_std(r["smoothness"] for r in rs),
            "tv_ratio": mean_std(r["tv_ratio"] for r in rs),
            "ms_per_step": mean_std(r["ms_per_step"] for r in rs),
            "params": rs[0]["params"],
        }
    ctx.write_csv("curves.csv", rows)

    # Figures: error curves per target, learned functions (seed 0).
    for target in cfg.targets:
        fig, ax = plt.subplots(figsize=(6, 4))
        for act in cfg.activations:
            steps = [c["step"] for c in runs[target, act][0]["curve"]]
            vals = torch.tensor([[c["test_mse"] for c in r["curve"]] for r in runs[target, act]])
            ax.plot(steps, vals.mean(0).numpy(), label=act)
            if vals.shape[0] > 1:
                ax.fill_between(steps, vals.min(0).values.numpy(), vals.max(0).values.numpy(),
                                alpha=0.2)
        ax.set_yscale("log")
        ax.set_xlabel("Adam step")
        ax.set_ylabel("test MSE")
        ax.set_title(f"iat-fit: {target} (mean, min-max over {plural(cfg.seeds, 'seed')})")
        ax.legend()
        ctx.savefig(fig, f"curves_{target}.png")
    t1 = [t for t in cfg.targets if t in TARGETS_1D]
    if t1:
        fig, axes = plt.subplots(len(t1), 1, figsize=(8, 3 * len(t1)), squeeze=False)
        for ax, target in zip(axes[:, 0], t1, strict=False):
            ref = runs[target, cfg.activations[0]][0]
            ax.plot(ref["x_test"][:, 0].numpy(), ref["y_test"][:, 0].numpy(), "k", lw=2, alpha=0.4, label="target")
            for act in cfg.activations:
                r = runs[target, act][0]
                ax.plot(r["x_test"][:, 0].numpy(), r["pred"][:, 0].numpy(), lw=1, label=act)
            ax.set_title(f"learned functions, {target} (seed 0)")
            ax.legend(fontsize=7, ncol=3)
        ctx.savefig(fig, "fits_1d.png")
    for target in (t for t in cfg.targets if t in TARGETS_2D):
        n = cfg.grid_2d
        panels = [("target", runs[target, cfg.activations[0]][0]["y_test"])]
        panels += [(a, runs[target, a][0]["pred"]) for a in cfg.activations]
        fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3))
        for ax, (title, vals) in zip(axes, panels, strict=False):
            ax.imshow(vals[:, 0].reshape(n, n).T.numpy(), origin="lower", extent=(-1, 1, -1, 1), cmap="RdBu",
                      vmin=-1.2, vmax=1.2)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        ctx.savefig(fig, f"fit_{target}.png")

    # Report.
    lines = [
        "# iat-fit: ReLU vs IAT-ReLU on high-frequency targets",
        "",
        f"Command: `{ctx.command}`" if ctx.command else "",
        "",
        f"MLP with {cfg.depth} hidden layers of width {cfg.width}; IAT layers use M = "
        f"{cfg.points_factor} x width midpoint nodes, q = dual.  Full-batch Adam (lr {cfg.lr}), "
        f"{plural(cfg.steps, 'step')}, {plural(cfg.seeds, 'seed')}; mean ± std over seeds.  Smoothness is the RMS "
        "second derivative (1-D) or RMS Laplacian (2-D) of the fit on the test grid; the target's "
        "own value is given for scale.  TV ratio = total variation of fit / of target (1-D).",
        "",
    ]
    for target in cfg.targets:
        ref = runs[target, cfg.activations[0]][0]
        tgt_smooth = smoothness(ref["y_test"], target, cfg)
        lines += [f"## {target} (target smoothness {tgt_smooth:.1f})", ""]
        table = []
        for act in cfg.activations:
            s = summary[target][act]
            table.append([act, s["params"], fmt(s["train_mse"], 3, True), fmt(s["test_mse"], 3, True),
                          fmt(s["smoothness"], 1), fmt(s["tv_ratio"], 2), fmt(s["ms_per_step"], 2)])
        lines += [markdown_table(["activation", "params", "train MSE", "test MSE", "smoothness",
                                  "TV ratio", "ms/step"], table), "",
                  f"![curves](curves_{target}.png)", ""]
    if t1:
        lines += ["## Learned functions", "", "![fits](fits_1d.png)", ""]
    for target in (t for t in cfg.targets if t in TARGETS_2D):
        lines += [f"![{target}](fit_{target}.png)", ""]
    lines += [
        "Note: with the rectangular basis, the midpoint rule and q = dual, IAT-ReLU *is* ReLU "
        "(exactly), so its row doubles as a check of the pipeline.",
        "",
    ]
    ctx.write_text("report.md", "\n".join(lines))
    return {"summary": summary}
