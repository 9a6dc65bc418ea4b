"""``lm-stability``: training without gradient clipping through long BPTT windows.

The seed: the aLSTM "can be trained without gradient clipping while
backpropagating through thousands of time steps".  Here every model (default
the equal-size ``ptb-small-alstm`` and ``ptb-small-lstm``) trains with
``clip = 0`` on fixed BPTT windows of ``bptt`` steps (default 500, no variable
length) for ``updates`` optimiser steps (default 180 of 10 sequences, one pass over
PTB's first half: 40 updates of 20
left both small models above the unigram perplexity, unable to show learning), with
``seeds`` seeds, recording after
every update the global gradient norm (before the step) and the training loss.
A run *diverged* if the loss or the gradient norm became non-finite; at the end
it is validated on the first ``eval_tokens`` validation tokens and compared with
the add-one unigram perplexity of the same tokens (did it learn at all).

Outputs: ``trace.csv`` (one row per update), ``stability.png`` (gradient norm and
loss per update, log scale), ``report.md``.  ``--resume`` reuses finished runs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..data.corpus import load_corpus, unigram_perplexity
from ..lm import LMTrainer, TrainingDiverged, get_preset
from .cache import RunCache
from .common import markdown_table, mean_std, plural, require_positive, require_presets
from .runner import ConfigError, RunContext, register


@dataclass
class LMStabilityConfig:
    models: tuple[str, ...] = ("ptb-small-alstm", "ptb-small-lstm")
    bptt: int = 500
    updates: int = 180
    batch_size: int = 10
    seeds: int = 2
    eval_tokens: int = 20000
    tiny: bool = False
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        require_presets(self)
        require_positive(self, "bptt", "updates", "batch_size", "seeds")
        if self.eval_tokens < 0:
            raise ValueError("eval_tokens must be >= 0 (0 = all)")


def grad_norm(params: list[torch.nn.Parameter]) -> float:
    """Global L2 norm of the gradients (what clipping would have looked at)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


def train_unclipped(run_cfg, corpus) -> dict:
    """Train with ``clip = 0``, recording the gradient norm and loss of every update."""
    trace: list[dict] = []
    start = time.perf_counter()

    def record(trainer: LMTrainer) -> None:
        trace.append({"update": trainer.global_step, "grad_norm": grad_norm(trainer.params)})

    status, message, val_ppl = "ok", "", float("nan")
    try:
        trainer = LMTrainer(run_cfg, corpus)
        out = trainer.fit(on_batch_end=record)
        val_ppl = out["final_val_ppl"]
        losses = [c["train_loss"] for c in out["curve"]]
        for row, loss in zip(trace, losses, strict=False):
            row["train_loss"] = loss
        if not all(math.isfinite(r["grad_norm"]) for r in trace) or not math.isfinite(val_ppl):
            status = "diverged"
    except TrainingDiverged as exc:
        status, message = "diverged", str(exc)
    norms = [r["grad_norm"] for r in trace]
    return {"status": status, "message": message, "val_ppl": val_ppl, "trace": trace,
            "max_grad_norm": max(norms) if norms else float("nan"),
            "median_grad_norm": sorted(norms)[len(norms) // 2] if norms else float("nan"),
            "time_s": time.perf_counter() - start}


@register(
    "lm-stability",
    LMStabilityConfig,
    quick={"bptt": 40, "updates": 4, "seeds": 1, "eval_tokens": 600, "tiny": True},
    summary="no gradient clipping, BPTT 500: gradient-norm traces and divergence, aLSTM vs LSTM",
    needs_data=("ptb",),
    resumable=True,
)
def run(cfg: LMStabilityConfig, ctx: RunContext) -> dict:
    bases = {m: get_preset(m, quick=cfg.tiny, device=cfg.device, clip=0.0, bptt=cfg.bptt,
                           variable_bptt=False, epochs=1, max_batches=cfg.updates, log_interval=1,
                           batch_size=cfg.batch_size, eval_tokens=cfg.eval_tokens, lr_cuts=())
             for m in cfg.models}
    corpora = {d: load_corpus(d, data_dir=ctx.data_dir) for d in {c.dataset for c in bases.values()}}
    for m, c in bases.items():
        available = (corpora[c.dataset].train.numel() // c.batch_size - 1) // cfg.bptt
        if cfg.updates > available:
            raise ConfigError(f"{m}: the {c.dataset} training stream has only {available} windows of "
                              f"{cfg.bptt} steps at batch size {c.batch_size}; lower updates, bptt or "
                              "batch_size")
    unigram = {d: unigram_perplexity(c.train, c.valid[: cfg.eval_tokens] if cfg.eval_tokens else c.valid,
                                     c.vocab_size) for d, c in corpora.items()}
    cache = RunCache(ctx)
    runs: dict[str, list[dict]] = {m: [] for m in cfg.models}
    with ctx.bar(len(cfg.models) * cfg.seeds, "lm-stability") as bar:
        for m, base in bases.items():
            for s in range(cfg.seeds):
                key = f"{m}-seed{s}"
                run_cfg = dataclasses.replace(base, seed=cfg.seed * 1000 + s)
                runs[m].append(cache.run(key, run_cfg, train_unclipped, run_cfg, corpora[base.dataset]))
                bar.update(1)
    summary = summarize(cfg, bases, runs, unigram)
    ctx.write_csv("trace.csv", [{"model": m, "seed": s, **t} for m, rs in runs.items()
                                for s, r in enumerate(rs) for t in r["trace"]])
    fig = figure(cfg, runs, ctx)
    ctx.write_text("report.md", report(cfg, ctx, summary, fig))
    return {"summary": summary, "unigram_ppl": unigram}


def summarize(cfg: LMStabilityConfig, bases: dict, runs: dict, unigram: dict) -> dict:
    out = {}
    for m, rs in runs.items():
        threshold = unigram[bases[m].dataset]
        finite = [float(r["val_ppl"]) for r in rs if r["status"] == "ok"]
        out[m] = {
            "core": bases[m].core, "runs": len(rs),
            "diverged": sum(r["status"] == "diverged" for r in rs),
            "beat_unigram": sum(v < threshold for v in finite),
            "val_ppl": mean_std(finite), "val_ppl_per_seed": [float(r["val_ppl"]) for r in rs],
            "max_grad_norm": max(float(r["max_grad_norm"]) for r in rs),
            "median_grad_norm": mean_std(float(r["median_grad_norm"]) for r in rs),
            "unigram_ppl": threshold,
        }
    return out


def figure(cfg: LMStabilityConfig, runs: dict, ctx: RunContext) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for i, (m, rs) in enumerate(runs.items()):
        for s, r in enumerate(rs):
            steps = [t["update"] for t in r["trace"]]
            kw = {"color": f"C{i}", "alpha": 0.8, "label": m if s == 0 else None}
            axes[0].plot(steps, [float(t["grad_norm"]) for t in r["trace"]], **kw)
            axes[1].plot(steps, [float(t.get("train_loss", "nan")) for t in r["trace"]], **kw)
    axes[0].set_ylabel("gradient norm (before the step, no clipping)")
    axes[1].set_ylabel("training loss (nats)")
    for ax in axes:
        ax.set_xlabel("update")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    axes[0].set_title(f"BPTT {cfg.bptt}, clip = 0, {plural(cfg.seeds, 'seed')}")
    return ctx.savefig(fig, "stability.png").name


def report(cfg: LMStabilityConfig, ctx: RunContext, summary: dict, fig: str) -> str:
    rows = [[m, s["runs"], s["diverged"], s["beat_unigram"], f"{s['unigram_ppl']:.1f}",
             ", ".join(f"{v:.1f}" for v in s["val_ppl_per_seed"]), f"{s['median_grad_norm']['mean']:.3g}",
             f"{s['max_grad_norm']:.3g}"] for m, s in summary.items()]
    return "\n".join([
        "# lm-stability: no gradient clipping, long BPTT", "",
        f"Command: `{ctx.command}`" if ctx.command else "", "",
        f"Each model trains with clip = 0 on fixed windows of {cfg.bptt} time steps (batch "
        f"{cfg.batch_size}) for {plural(cfg.updates, 'update')}, {plural(cfg.seeds, 'seed')}, the presets' Adam recipe; "
        f"validation on the first {cfg.eval_tokens or 'all'} validation tokens.  'beat unigram' counts "
        "runs whose final validation perplexity is below the add-one unigram perplexity.", "",
        markdown_table(["model", "runs", "diverged", "beat unigram", "unigram ppl", "val ppl per seed",
                        "median grad norm", "max grad norm"], rows), "",
        f"![stability]({fig})", "",
    ])
