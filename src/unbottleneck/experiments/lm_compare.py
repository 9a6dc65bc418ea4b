"""``lm-compare``: aLSTM vs LSTM vs AWD-LSTM at equal size and equal tuning budget (CPU scale).

The seed's claim (PTB: aLSTM 58.7 vs LSTM 71.7 validation perplexity, and the
aLSTM reaching the LSTM's best in 144 epochs where the LSTM needed 500) needs
GPU-days at full size.  This experiment decides its CPU-scale stand-in:

1. **Tune** (same budget for every model): each model trains once per point of
   the grid ``lrs x dropout_scales`` (every dropout rate, and weight drop, times
   the scale) for ``tune_batches`` batches and is validated; the grid includes the
   presets' untuned defaults (lr 3e-3, scale 1), so the report also says which
   model the defaults favoured.
2. **Train** the best grid point of each model for ``epochs`` short epochs of
   ``max_batches`` batches that walk through the corpus (``carry_position``), with
   ``seeds`` seeds; validation perplexity after every epoch.
3. **Summarise**: learning curves (mean ± std over seeds, per epoch and per
   training token), best validation and test perplexity, tokens/s, and "epochs to
   reach the LSTM's best validation perplexity" (the stand-in for 144 vs 500).

Beside the grid, ``alstm_checks`` tries the aLSTM's own choices (adaptation size, policy
init, ``dropouta``) at its chosen grid point: reported, never used for selection, so the
tuning budget stays equal.

Every training is stored when it finishes (``OUT/runs/``), so ``--resume`` redoes
only the missing ones.  Outputs: ``grid.csv``, ``curves.csv``, ``curves.png``,
``report.md``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from ..data.corpus import load_corpus
from ..lm import LMConfig, LMTrainer, TrainingDiverged, alstm_available, get_preset
from .cache import RunCache
from .common import markdown_table, mean_std, plural, require_positive, require_presets
from .runner import ConfigError, RunContext, register

DROPOUTS = ("dropoute", "dropouti", "dropouth", "dropouta", "dropouto", "wdrop")


@dataclass
class LMCompareConfig:
    models: tuple[str, ...] = ("ptb-small-alstm", "ptb-small-lstm", "ptb-small-awd-lstm")
    baseline: str = "ptb-small-lstm"  # "epochs to reach this model's best"
    lrs: tuple[float, ...] = (3e-3, 6e-3)
    dropout_scales: tuple[float, ...] = (0.5, 1.0)
    tune_batches: int = 250
    # aLSTM design checks: tuning runs of the aLSTM at its best grid point with one of its own
    # choices changed ("field=value" of LMConfig); reported, never used to pick its config.
    alstm_checks: tuple[str, ...] = ("adapt_size=64", "alstm_policy_init=zero_mean", "dropouta=0")
    seeds: int = 2
    epochs: int = 6
    max_batches: int = 200  # batches per (short) epoch; 0 = full epochs
    eval_tokens: int = 20000  # validation / test prefix (0 = all)
    tiny: bool = False  # quick sizes (smoke runs)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        require_presets(self)
        if self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} must be one of models ({', '.join(self.models)})")
        if not self.lrs or not self.dropout_scales:
            raise ValueError("lrs and dropout_scales must each hold at least one value")
        if not all(math.isfinite(v) and v > 0 for v in self.lrs):
            raise ValueError(f"every lr must be a finite number > 0, got {self.lrs}")
        if not all(math.isfinite(v) and v >= 0 for v in self.dropout_scales):
            raise ValueError(f"every dropout scale must be a finite number >= 0, got {self.dropout_scales}")
        require_positive(self, "tune_batches", "seeds", "epochs")
        if self.max_batches < 0 or self.eval_tokens < 0:
            raise ValueError("max_batches and eval_tokens must be >= 0 (0 = no limit)")
        for check in self.alstm_checks:
            parse_check(check)


def parse_check(text: str) -> dict:
    """``"adapt_size=64"`` -> ``{"adapt_size": 64}`` (typed by the LMConfig field)."""
    from .runner import apply_overrides

    key = text.split("=", 1)[0].strip()
    if "=" not in text or key not in {f.name for f in dataclasses.fields(LMConfig)}:
        raise ValueError(f"alstm_checks entry {text!r} must be field=value of the LM config")
    return {key: getattr(apply_overrides(LMConfig(), [text]), key)}


def _scaled(cfg, scale: float, lr: float):
    rates = {k: min(getattr(cfg, k) * scale, 0.95) for k in DROPOUTS}
    return dataclasses.replace(cfg, lr=lr, **rates)


def train(run_cfg, corpus) -> dict:
    """One training run: per-epoch history, best / test perplexity, or the divergence."""
    start = time.perf_counter()
    try:
        trainer = LMTrainer(run_cfg, corpus)
        out = trainer.fit()
    except TrainingDiverged as exc:
        return {"status": "diverged", "message": str(exc), "best_val_ppl": math.inf,
                "time_s": time.perf_counter() - start}
    return {"status": "ok", "best_val_ppl": out["best_val_ppl"], "test_ppl": out["test_ppl"],
            "params": out["params"], "tokens_per_s": out["tokens_per_s"],
            "history": [{k: r[k] for k in ("epoch", "train_ppl", "val_ppl", "tokens_per_s")}
                        for r in out["history"]],
            "time_s": time.perf_counter() - start}


def sweep(cfg: LMCompareConfig, ctx: RunContext) -> tuple[dict, dict]:
    """Tune every model on the grid, then train its best point with every seed."""
    bases = {m: get_preset(m, quick=cfg.tiny, device=cfg.device, lr_cuts=(), eval_tokens=cfg.eval_tokens,
                           test_batch_size=10) for m in cfg.models}
    if any(c.core == "alstm" for c in bases.values()) and not alstm_available():
        raise ConfigError("the alstm presets need unbottleneck.adaptive.alstm.ALSTM")
    corpora = {d: load_corpus(d, data_dir=ctx.data_dir) for d in {c.dataset for c in bases.values()}}
    cache = RunCache(ctx)
    grid_pts = [(lr, sc) for lr in cfg.lrs for sc in cfg.dropout_scales]
    grid: dict[str, list[dict]] = {m: [] for m in cfg.models}
    runs: dict[str, list[dict]] = {m: [] for m in cfg.models}
    checks: list[dict] = []
    alstms = [m for m, c in bases.items() if c.core == "alstm"]
    total = len(cfg.models) * (len(grid_pts) + cfg.seeds) + len(alstms) * len(cfg.alstm_checks)
    with ctx.bar(total, "lm-compare") as bar:
        for m, base in bases.items():
            for lr, sc in grid_pts:
                bar.set_postfix_str(f"tune {m} lr {lr:g} x{sc:g}")
                key = f"tune-{m}-lr{lr:g}-s{sc:g}"
                run_cfg = dataclasses.replace(_scaled(base, sc, lr), epochs=1, max_batches=cfg.tune_batches,
                                              seed=cfg.seed * 1000 + 1)
                res = cache.run(key, run_cfg, train, run_cfg, corpora[base.dataset])
                grid[m].append({"lr": lr, "dropout_scale": sc, **res})
                bar.update(1)
            best = min(grid[m], key=lambda r: float(r["best_val_ppl"]))  # "inf" when diverged
            for check in cfg.alstm_checks if base.core == "alstm" else ():
                bar.set_postfix_str(f"check {m} {check}")
                key = f"check-{m}-{check}"
                run_cfg = dataclasses.replace(_scaled(base, best["dropout_scale"], best["lr"]), epochs=1,
                                              max_batches=cfg.tune_batches, seed=cfg.seed * 1000 + 1,
                                              **parse_check(check))
                res = cache.run(key, run_cfg, train, run_cfg, corpora[base.dataset])
                checks.append({"model": m, "change": check, "reference_val_ppl": best["best_val_ppl"], **res})
                bar.update(1)
            for s in range(cfg.seeds):
                bar.set_postfix_str(f"train {m} seed {s}")
                key = f"train-{m}-seed{s}"
                run_cfg = dataclasses.replace(
                    _scaled(base, best["dropout_scale"], best["lr"]), epochs=cfg.epochs,
                    max_batches=cfg.max_batches, carry_position=True, seed=cfg.seed * 1000 + 100 + s)
                res = cache.run(key, run_cfg, train, run_cfg, corpora[base.dataset])
                runs[m].append({"lr": best["lr"], "dropout_scale": best["dropout_scale"], **res})
                bar.update(1)
    return grid, runs, checks


def epochs_to_reach(history: list[dict], target: float) -> int | None:
    """First epoch whose validation perplexity is <= ``target`` (None if never)."""
    return next((r["epoch"] for r in history if float(r["val_ppl"]) <= target), None)


def summarize(cfg: LMCompareConfig, grid: dict, runs: dict) -> dict:
    base_best = [float(r["best_val_ppl"]) for r in runs[cfg.baseline]]
    out: dict[str, dict] = {}
    for m, rs in runs.items():
        ok = [r for r in rs if r["status"] == "ok"]
        default = next((g for g in grid[m] if g["lr"] == 3e-3 and g["dropout_scale"] == 1.0), None)
        curves = [[float(h["val_ppl"]) for h in r["history"]] for r in ok]
        out[m] = {
            "chosen": {"lr": rs[0]["lr"], "dropout_scale": rs[0]["dropout_scale"]},
            "runs": len(rs), "diverged": len(rs) - len(ok),
            "params": ok[0]["params"] if ok else None,
            "best_val_ppl": mean_std(r["best_val_ppl"] for r in ok),
            "best_val_ppl_per_seed": [float(r["best_val_ppl"]) for r in rs],
            "test_ppl": mean_std(r["test_ppl"] for r in ok),
            "tokens_per_s": mean_std(r["tokens_per_s"] for r in ok),
            "val_ppl_per_epoch": [mean_std(c[e] for c in curves) for e in range(min(map(len, curves)))]
            if curves else [],
            "epochs_to_baseline_best": [epochs_to_reach(r.get("history", []), t)
                                        for r, t in zip(rs, base_best, strict=False)],
            "default_grid_val_ppl": default["best_val_ppl"] if default else None,
            "grid": [{"lr": g["lr"], "dropout_scale": g["dropout_scale"], "val_ppl": g["best_val_ppl"],
                      "status": g["status"]} for g in grid[m]],
        }
    return out


def figures(cfg: LMCompareConfig, runs: dict, ctx: RunContext) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for m, rs in runs.items():
        for s, r in enumerate(rs):
            if r["status"] != "ok":
                continue
            ep = [h["epoch"] for h in r["history"]]
            val = [h["val_ppl"] for h in r["history"]]
            tokens = [e * cfg.max_batches for e in ep] if cfg.max_batches else ep
            kw = {"label": m if s == 0 else None, "color": f"C{list(runs).index(m)}", "alpha": 0.8}
            axes[0].plot(ep, val, "o-", ms=3, **kw)
            axes[1].plot(tokens, val, "o-", ms=3, **kw)
    axes[0].set_xlabel(f"epoch ({cfg.max_batches or 'all'} batches each)")
    axes[1].set_xlabel("training batches" if cfg.max_batches else "epoch")
    for ax in axes:
        ax.set_ylabel("validation perplexity")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    axes[0].set_title(f"learning curves, {plural(cfg.seeds, 'seed')} each (best grid point per model)")
    return ctx.savefig(fig, "curves.png").name


def report(cfg: LMCompareConfig, ctx: RunContext, summary: dict, checks: list[dict], fig: str) -> str:
    rows = [[m, f"{s['params']:,}" if s["params"] else "-", f"lr {s['chosen']['lr']:g}, "
             f"dropout x{s['chosen']['dropout_scale']:g}",
             f"{s['best_val_ppl']['mean']:.1f} ± {s['best_val_ppl']['std']:.1f}",
             ", ".join(f"{v:.1f}" for v in s["best_val_ppl_per_seed"]),
             f"{s['test_ppl']['mean']:.1f}", f"{s['tokens_per_s']['mean']:.0f}",
             ", ".join("never" if e is None else str(e) for e in s["epochs_to_baseline_best"])]
            for m, s in summary.items()]
    grid_rows = [[m, f"{g['lr']:g}", f"x{g['dropout_scale']:g}",
                  f"{float(g['val_ppl']):.1f}" if g["status"] == "ok" else g["status"]]
                 for m, s in summary.items() for g in s["grid"]]
    curve_rows = [[m, *(f"{e['mean']:.1f} ± {e['std']:.1f}" for e in s["val_ppl_per_epoch"])]
                  for m, s in summary.items()]
    defaults = {m: s["default_grid_val_ppl"] for m, s in summary.items() if s["default_grid_val_ppl"]}
    favoured = min(defaults, key=defaults.get) if defaults else None
    lines = [
        "# lm-compare: aLSTM vs LSTM vs AWD-LSTM at equal size and equal tuning budget", "",
        f"Command: `{ctx.command}`" if ctx.command else "", "",
        f"Tuning: every model trains once per grid point (lr in {list(cfg.lrs)} x dropout scale in "
        f"{list(cfg.dropout_scales)}: every dropout rate and weight drop times the scale) for "
        f"{cfg.tune_batches} batches, validated on the first {cfg.eval_tokens or 'all'} validation "
        f"tokens; the best point of each model is then trained for {plural(cfg.epochs, 'epoch')} of "
        f"{cfg.max_batches or 'all'} batches (consecutive stretches of the corpus) with {cfg.seeds} "
        f"seeds.  Test perplexity on the first {cfg.eval_tokens or 'all'} test tokens.", "",
        markdown_table(["model", "params", "chosen", "best val ppl (mean ± std)", "per seed", "test ppl",
                        "tok/s", f"epochs to reach {cfg.baseline}'s best (per seed)"], rows), "",
        "Validation perplexity per epoch (mean ± std over seeds):", "",
        markdown_table(["model", *(f"epoch {e + 1}" for e in range(cfg.epochs))], curve_rows), "",
        "The tuning grid (one seed each; val ppl after the tuning run):", "",
        markdown_table(["model", "lr", "dropout scale", "val ppl"], grid_rows), "",
    ]
    if favoured:
        lines += [f"At the presets' untuned defaults (lr 3e-3, dropout x1) the lowest tuning-run "
                  f"perplexity was {favoured}'s: " + ", ".join(f"{m} {v:.1f}" for m, v in defaults.items())
                  + ".", ""]
    if checks:
        lines += ["aLSTM design checks (tuning runs at the aLSTM's chosen grid point with one of its own "
                  "choices changed; reported only, not used to pick its configuration; `adapt_size=64` "
                  "adds parameters):", "",
                  markdown_table(["model", "change", "val ppl", "val ppl of the chosen config"],
                                 [[c["model"], f"`{c['change']}`",
                                   f"{float(c['best_val_ppl']):.1f}" if c["status"] == "ok" else c["status"],
                                   f"{float(c['reference_val_ppl']):.1f}"] for c in checks]), ""]
    lines += [f"![curves]({fig})", ""]
    return "\n".join(lines)


@register(
    "lm-compare",
    LMCompareConfig,
    quick={"lrs": (3e-3,), "dropout_scales": (1.0,), "tune_batches": 3, "seeds": 2, "epochs": 2,
           "max_batches": 3, "eval_tokens": 600, "tiny": True, "alstm_checks": ("dropouta=0",)},
    summary="aLSTM vs LSTM vs AWD-LSTM (small, equal parameters): same tuning grid, learning curves "
            "over seeds, epochs to reach the LSTM's best",
    needs_data=("ptb",),
    resumable=True,
)
def run(cfg: LMCompareConfig, ctx: RunContext) -> dict:
    grid, runs, checks = sweep(cfg, ctx)
    summary = summarize(cfg, grid, runs)
    ctx.write_csv("grid.csv", [{"model": m, **g} for m, s in summary.items() for g in s["grid"]])
    ctx.write_csv("curves.csv", [{"model": m, "seed": i, **h} for m, rs in runs.items()
                                 for i, r in enumerate(rs) for h in r.get("history", [])])
    fig = figures(cfg, runs, ctx)
    ctx.write_text("report.md", report(cfg, ctx, summary, checks, fig))
    return {"summary": summary, "baseline": cfg.baseline,
            "alstm_checks": [{k: c[k] for k in ("model", "change", "status", "best_val_ppl", "reference_val_ppl")}
                             for c in checks]}
