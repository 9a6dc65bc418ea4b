"""``iat-points``: sweep of the number of quadrature nodes M (seed experiment c).

For each basis and each M = factor x width: high-frequency fitting (test MSE,
smoothness of the fit, time per step), random-label memorisation (training
accuracy) and the size of the activation pattern's jumps along a path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..iat import IAT, pattern_jump
from ..training import seed_everything
from . import iat_fit, iat_memorize
from .common import check_activation, fmt, markdown_table, mean_std, plural, require_nonempty
from .runner import RunContext, register


@dataclass
class IATPointsConfig:
    bases: tuple[str, ...] = ("rectangular", "piecewise_linear", "fourier")
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)  # M = factor * width
    target: str = "sines"
    fit_width: int = 64
    fit_steps: int = 1500
    memorize: bool = True
    memorize_epochs: int = 60
    seeds: int = 2
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        require_nonempty(self, "bases")
        for b in self.bases:
            check_activation("iat-" + b)
        if not self.factors or min(self.factors) < 1:
            raise ValueError("factors must be positive integers")
        if self.target not in iat_fit.TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose from {', '.join(iat_fit.TARGETS)}")


def _jump(basis: str, width: int, factor: int) -> float:
    """Largest Jacobian jump along a fixed random segment (same segment for every M)."""
    gen = torch.Generator().manual_seed(1234)
    z0, z1 = torch.randn(2, width, generator=gen, dtype=torch.float64)
    iat = IAT(width, basis=basis, num_points=factor * width, dtype=torch.float64)
    return pattern_jump(iat, z0, z1, steps=4000)


@register(
    "iat-points",
    IATPointsConfig,
    quick={"bases": ("piecewise_linear",), "factors": (1, 4), "fit_width": 16, "fit_steps": 60,
           "memorize_epochs": 2, "seeds": 1},
    summary="sweep of the number of quadrature points M: accuracy, smoothness, time per step",
)
def run(cfg: IATPointsConfig, ctx: RunContext) -> dict:
    import matplotlib.pyplot as plt

    fit_cfg = dataclasses.replace(
        iat_fit.IATFitConfig(), targets=(cfg.target,), width=cfg.fit_width, steps=cfg.fit_steps,
        eval_every=max(1, cfg.fit_steps // 10), seed=cfg.seed, device=cfg.device,
    )
    mem_cfg = dataclasses.replace(iat_memorize.IATMemorizeConfig(), epochs=cfg.memorize_epochs,
                                  seed=cfg.seed, device=cfg.device)
    n_jobs = len(cfg.bases) * len(cfg.factors) * cfg.seeds
    total = n_jobs * (cfg.fit_steps + (cfg.memorize_epochs if cfg.memorize else 0))
    rows = []
    with ctx.bar(total, "iat-points") as bar:
        for basis in cfg.bases:
            for factor in cfg.factors:
                bar.set_postfix_str(f"{basis} M={factor}d")
                fit_c = dataclasses.replace(fit_cfg, points_factor=factor)
                mem_c = dataclasses.replace(mem_cfg, points_factor=factor)
                for s in range(cfg.seeds):
                    r = iat_fit.train_one(cfg.target, "iat-" + basis, s, fit_c, bar)
                    row = {"basis": basis, "factor": factor, "M": factor * cfg.fit_width, "seed": s,
                           "test_mse": r["test_mse"], "smoothness": r["smoothness"],
                           "ms_per_step": r["ms_per_step"]}
                    if cfg.memorize:
                        gen = seed_everything(cfg.seed * 1000 + s)
                        x, y = iat_memorize.make_data(mem_c, gen, ctx.data_dir)
                        m = iat_memorize.train_one("iat-" + basis, s, mem_c, x, y, bar)
                        row["memorize_acc"] = m["final_acc"]
                    rows.append(row)
    ctx.write_csv("sweep.csv", rows)

    summary: dict = {}
    for basis in cfg.bases:
        for factor in cfg.factors:
            sel = [r for r in rows if r["basis"] == basis and r["factor"] == factor]
            entry = {k: mean_std(r[k] for r in sel) for k in ("test_mse", "smoothness", "ms_per_step")}
            if cfg.memorize:
                entry["memorize_acc"] = mean_std(r["memorize_acc"] for r in sel)
            entry["pattern_jump"] = _jump(basis, mem_cfg.width, factor)
            summary.setdefault(basis, {})[str(factor)] = entry

    keys = [("test_mse", "fit test MSE", True), ("smoothness", "fit smoothness (RMS f'')", False),
            ("ms_per_step", "ms per training step", False), ("pattern_jump", "max Jacobian jump", True)]
    if cfg.memorize:
        keys.insert(2, ("memorize_acc", "memorisation train acc", False))
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4))
    for ax, (key, label, logy) in zip(axes, keys, strict=False):
        for basis in cfg.bases:
            ms = [f * cfg.fit_width for f in cfg.factors] if key != "pattern_jump" else \
                [f * mem_cfg.width for f in cfg.factors]
            vals = [summary[basis][str(f)][key] for f in cfg.factors]
            means = [v["mean"] if isinstance(v, dict) else v for v in vals]
            ax.plot(ms, means, "o-", label=basis)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("M (quadrature nodes)")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    ctx.savefig(fig, "sweep.png")

    table = []
    for basis in cfg.bases:
        for factor in cfg.factors:
            e = summary[basis][str(factor)]
            row = [basis, f"{factor}d", fmt(e["test_mse"], 3, True), fmt(e["smoothness"], 1)]
            if cfg.memorize:
                row.append(fmt(e["memorize_acc"], 3))
            row += [fmt(e["ms_per_step"], 2), f"{e['pattern_jump']:.3g}"]
            table.append(row)
    header = ["basis", "M", "fit test MSE", "smoothness"] + (["memorise acc"] if cfg.memorize else []) \
        + ["ms/step (fit)", "max Jacobian jump"]
    lines = [
        "# iat-points: sweep of the number of quadrature nodes M",
        "",
        f"Command: `{ctx.command}`" if ctx.command else "",
        "",
        f"Fit: target `{cfg.target}`, width {cfg.fit_width}, {cfg.fit_steps} Adam steps.  "
        + (f"Memorisation: the `iat-memorize` setting (width {mem_cfg.width}, depth {mem_cfg.depth}, "
           f"{mem_cfg.n_samples} random-label samples) for {plural(cfg.memorize_epochs, 'epoch')}.  "
           if cfg.memorize else "")
        + f"{plural(cfg.seeds, 'seed')}, mean ± std.  The Jacobian jump is the largest change of S(z) "
        "between neighbouring points of a fine path (width "
        f"{mem_cfg.width}): O(1) for the rectangular basis, shrinking like 1/M for continuous ones.",
        "",
        markdown_table(header, table),
        "",
        "![sweep](sweep.png)",
        "",
    ]
    ctx.write_text("report.md", "\n".join(lines))
    return {"summary": summary}
