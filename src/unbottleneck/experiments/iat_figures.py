"""Figures of the IAT experiments: the M sweep, the jump order, activation patterns."""

from __future__ import annotations

from typing import Any

import torch

from ..iat import IAT, activation_matrix, pattern_along_path
from .runner import RunContext

SWEEP_PANELS = (  # (key, title, log y)
    ("test_mse", "fit test MSE", True),
    ("smoothness", "fit roughness (RMS f'')", False),
    ("memorize_acc", "memorisation train acc", False),
    ("spikes", "loss spikes per run", False),
    ("grad_spread", "grad-norm spread (std log10)", False),
    ("macs", "multiply-adds / sample (equal for every basis)", True),
)


def _mean(v: Any) -> float:
    return float(v["mean"]) if isinstance(v, dict) else float(v)


def sweep_figure(ctx: RunContext, cfg: Any, summary: dict, rows: list[dict]) -> None:
    """Each statistic against M per basis (mean, min-max band), and the loss traces of seed 0."""
    import matplotlib.pyplot as plt

    panels = [p for p in SWEEP_PANELS if p[0] != "memorize_acc" or cfg.memorize]
    cols = (len(panels) + 2) // 2
    fig, grid = plt.subplots(2, cols, figsize=(3.8 * cols, 6.6), layout="constrained")
    axes = list(grid.flat)
    for ax in axes[len(panels) + 1:]:
        ax.set_visible(False)
    ms = [f * cfg.fit_width for f in cfg.factors]
    color = {basis: f"C{i}" for i, basis in enumerate(cfg.bases)}  # one colour per basis in every panel
    for ax, (key, title, logy) in zip(axes, panels, strict=False):
        for basis in cfg.bases:
            vals = [summary[basis][str(f)][key] for f in cfg.factors]
            ax.plot(ms, [_mean(v) for v in vals], "o-", color=color[basis], label=basis)
            if isinstance(vals[0], dict):
                ax.fill_between(ms, [v["min"] for v in vals], [v["max"] for v in vals],
                                color=color[basis], alpha=0.15)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("M (quadrature nodes)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    ax = axes[len(panels)]
    for basis in cfg.bases:
        for factor, style in ((cfg.factors[0], ":"), (cfg.factors[-1], "-")):
            trace = next(r["loss_trace"] for r in rows if r["basis"] == basis and r["factor"] == factor)
            ax.plot(trace, style, lw=0.8, color=color[basis], label=f"{basis} M={factor}d")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("training loss, seed 0", fontsize=9)
    ax.legend(fontsize=6)
    ctx.savefig(fig, "sweep.png")


def jump_figure(ctx: RunContext, jump: dict) -> None:
    """Median largest exact jump against M (log-log) with the fitted order per basis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    for basis, j in jump.items():
        ax.plot(j["M"], j["jump"], "o-", label=f"{basis} (order {j['order']:.2f})")
    ms = next(iter(jump.values()))["M"]
    ref = next(iter(jump.values()))["jump"][0] if len(jump) == 1 else max(j["jump"][0] for j in jump.values())
    ax.plot(ms, [ref * ms[0] / m for m in ms], "k--", lw=1, label="slope -1 (1/M)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("M (quadrature nodes)")
    ax.set_ylabel("largest Jacobian jump (median over segments)")
    ax.set_title("exact Jacobian jumps along random segments")
    ax.legend(fontsize=7)
    ctx.savefig(fig, "jumps.png")


def pattern_figure(ctx: RunContext, bases: tuple[str, ...], width: int, seed: int = 0,
                   factor: int = 8, steps: int = 300) -> None:
    """Per basis: D(z(t)) as an image (t across, s up) and S(z) at t = 0, 1/2, 1."""
    import matplotlib.pyplot as plt

    gen = torch.Generator().manual_seed(4321 + seed)
    z0, z1 = torch.randn(2, width, generator=gen, dtype=torch.float64)
    ts = (0.0, 0.5, 1.0)
    fig, axes = plt.subplots(len(bases), 1 + len(ts), figsize=(3.2 * (1 + len(ts)), 2.9 * len(bases)),
                             squeeze=False, layout="constrained")
    for row, basis in zip(axes, bases, strict=False):
        iat = IAT(width, basis=basis, num_points=factor * width, dtype=torch.float64)
        img = pattern_along_path(iat, z0, z1, steps=steps).to(torch.float64)
        s = iat.nodes
        row[0].imshow(img.t().numpy(), origin="lower", aspect="auto", cmap="Greys",
                      extent=(0, 1, float(s[0]), float(s[-1])))
        row[0].set_title(f"{basis}: D(z(t))", fontsize=9)
        row[0].set_xlabel("t")
        row[0].set_ylabel("s")
        mats = [activation_matrix(iat, (1 - t) * z0 + t * z1) for t in ts]
        vmax = max(float(m.abs().max()) for m in mats)
        for ax, t, m in zip(row[1:], ts, mats, strict=False):
            im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"S(z(t={t:g}))", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=row[-1], shrink=0.8)
    ctx.savefig(fig, "patterns.png")
