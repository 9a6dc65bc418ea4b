"""Figures of ``mnist-bottleneck``, drawn as the seed draws them.

* test accuracy per epoch (mean and min-max over seeds);
* the hidden pre-activation distribution;
* static vs SVA effect histograms on shared axes, linear and log density;
* the effect against the pre-activation for a sample of the empirical distribution
  (a static scatter, and, where matplotlib's pillow writer is available, a GIF that
  adds the samples a batch at a time: the seed's animation).
"""

from __future__ import annotations

from typing import Any

import torch

from ..diagnostics import plot_histograms
from .common import plural
from .runner import RunContext

#: The pair the seed's figure compares.
PAIR = ("sigmoid", "sva-sigmoid")


def draw_figures(runs: dict[str, list[dict]], cfg: Any, ctx: RunContext) -> list[tuple[str, str]]:
    """Write every figure; returns (alt text, file name) in report order."""
    first = {v: rs[0] for v, rs in runs.items()}
    out = [("test accuracy", accuracy_curves(runs, ctx)),
           ("pre-activations", preactivations(first, ctx)),
           ("effects", effects(first, cfg.effect_threshold, ctx)),
           ("effect vs pre-activation", effect_scatter(first, ctx))]
    gif = effect_animation(first, ctx)
    if gif is not None:
        out.append(("effect vs pre-activation, animated", gif))
    return out


def accuracy_curves(runs: dict[str, list[dict]], ctx: RunContext) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, rs in runs.items():
        acc = torch.tensor([[c["test_acc"] for c in r["curve"]] for r in rs])
        epochs = range(1, acc.shape[1] + 1)
        ax.plot(epochs, acc.mean(0).numpy(), "o-", ms=3, label=v)
        if acc.shape[0] > 1:
            ax.fill_between(epochs, acc.min(0).values.numpy(), acc.max(0).values.numpy(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    seeds = len(next(iter(runs.values())))
    ax.set_title(f"mnist-bottleneck (mean, min-max over {plural(seeds, 'seed')})")
    ax.legend(fontsize=8)
    return ctx.savefig(fig, "test_accuracy.png").name


def _pair(first: dict[str, dict], key: str) -> dict[str, torch.Tensor]:
    """The seed's pair if both ran, else every variant."""
    chosen = {v: first[v][key] for v in PAIR if v in first}
    return chosen if len(chosen) == 2 else {v: r[key] for v, r in first.items()}


def preactivations(first: dict[str, dict], ctx: RunContext) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    plot_histograms({v: r["pre"] for v, r in first.items()}, ax=axes[0], bins=120,
                    title="pre-activations of the hidden layers, all variants (seed 0)", xlabel="a")
    static = {v: r["pre"] for v, r in first.items() if v in ("sigmoid", "relu")} or \
        {v: r["pre"] for v, r in first.items()}
    plot_histograms(static, ax=axes[1], bins=120, title="pre-activations of the static nets", xlabel="a")
    return ctx.savefig(fig, "preactivations.png").name


def effects(first: dict[str, dict], threshold: float, ctx: RunContext) -> str:
    """Static vs SVA effect on one shared x range: linear density (left), log density (right)."""
    import matplotlib.pyplot as plt

    pair = _pair(first, "effect")
    pooled = torch.cat([v.reshape(-1).double() for v in pair.values()])[:4_000_000]
    lo, hi = torch.quantile(pooled, torch.tensor([0.005, 0.995], dtype=torch.float64)).tolist()
    half = max(abs(lo), abs(hi), 2 * threshold)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharex=True)
    for ax, log in zip(axes, (False, True), strict=True):
        ax.axvspan(-threshold, threshold, color="grey", alpha=0.15, label=f"|effect| <= {threshold:g}")
        plot_histograms(pair, ax=ax, bins=150, range=(-half, half), log=log,
                        title=f"activation / adaptation effect ({'log' if log else 'linear'} density, "
                              "shared axes, seed 0)", xlabel="effect")
    return ctx.savefig(fig, "effects.png").name


def _scatter_points(r: dict, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(r["pre"].numel(), generator=gen)[:n]
    return r["pre"].reshape(-1)[idx], r["effect"].reshape(-1)[idx]


def effect_scatter(first: dict[str, dict], ctx: RunContext) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(first), figsize=(3.2 * len(first), 3), squeeze=False)
    for ax, (v, r) in zip(axes[0], first.items(), strict=True):
        a, e = _scatter_points(r, 4000)
        ax.scatter(a.numpy(), e.numpy(), s=2, alpha=0.4)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("pre-activation")
    axes[0][0].set_ylabel("effect")
    return ctx.savefig(fig, "effect_vs_preactivation.png").name


def effect_animation(first: dict[str, dict], ctx: RunContext, frames: int = 12,
                     per_frame: int = 250) -> str | None:
    """A GIF adding samples of (pre-activation, effect) a batch per frame; None without pillow."""
    import matplotlib.pyplot as plt
    from matplotlib import animation

    if not animation.writers.is_available("pillow"):
        return None
    pair = {v: first[v] for v in PAIR if v in first} or dict(list(first.items())[:2])
    points = {v: _scatter_points(r, frames * per_frame) for v, r in pair.items()}
    # explicit constrained layout: the writer draws frames outside savefig's tight bounding box
    fig, axes = plt.subplots(1, len(pair), figsize=(4 * len(pair), 3.4), squeeze=False, layout="constrained")
    dots = {}
    for ax, (v, (a, e)) in zip(axes[0], points.items(), strict=True):
        ax.set_xlim(float(a.min()), float(a.max()))
        ax.set_ylim(float(e.min()) - 1e-3, float(e.max()) + 1e-3)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("pre-activation")
        dots[v] = ax.plot([], [], ".", ms=2, alpha=0.5)[0]
    axes[0][0].set_ylabel("effect")

    def update(k: int) -> list:
        for v, (a, e) in points.items():
            dots[v].set_data(a[:(k + 1) * per_frame].numpy(), e[:(k + 1) * per_frame].numpy())
        return list(dots.values())

    anim = animation.FuncAnimation(fig, update, frames=frames, blit=False)
    name = "effect_vs_preactivation.gif"
    tmp = ctx.out_dir / f".{name}.tmp.gif"
    anim.save(tmp, writer=animation.PillowWriter(fps=4), dpi=80)
    plt.close(fig)
    data = tmp.read_bytes()
    tmp.unlink()
    ctx.write_bytes(name, data)
    return name

