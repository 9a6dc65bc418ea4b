"""``lm``: train a word-level language model (aLSTM / LSTM / AWD-LSTM) on PTB or WikiText-2.

``--set preset=NAME`` picks a recipe from :data:`unbottleneck.lm.PRESETS`
(``ptb-alstm``, ``wt2-alstm``, ``ptb-lstm``, ``wt2-lstm``, ``ptb-awd-lstm``,
``wt2-awd-lstm``, ``ptb-small-alstm``, ``ptb-small-lstm``, ``ptb-small-awd-lstm``); every field of
:class:`~unbottleneck.lm.LMConfig` can be overridden with ``--set key=value``
(a field left at ``None`` takes the preset's value).  ``--quick`` shrinks the
preset to a run of seconds.

Outputs in the run folder: ``checkpoint.pt`` (latest state, written at every
epoch end and every ``checkpoint_every`` batches), ``best.pt`` (best
validation weights), ``metrics.csv`` (one row per epoch, rewritten after each
epoch), ``curve.csv`` (train loss averaged over each ``log_interval`` batches),
``learning_curve.png``, ``report.md`` and ``results.json``.

``--set resume=true`` continues the run whose checkpoint is in ``--out``
(exactly: same weights and metrics as an uninterrupted run).  Starting a
fresh run in a folder that already holds a checkpoint is refused unless
``overwrite=true`` (quick runs overwrite silently).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field, fields, make_dataclass
from typing import Optional

from ..data.corpus import load_corpus
from ..lm import PRESETS, LMConfig, LMTrainer, TrainingDiverged, alstm_available, get_preset
from ..lm.train import BEST_NAME, CHECKPOINT_NAME
from ..training import distributed
from .common import markdown_table
from .runner import ConfigError, RunContext, register

_HINTS = typing.get_type_hints(LMConfig)


def _validate(self) -> None:
    self.resolve()


def _resolve(self) -> LMConfig:
    """The full :class:`LMConfig`: preset, then the quick shrink, then explicit fields."""
    if self.preset not in PRESETS:
        raise ValueError(f"unknown preset {self.preset!r}; valid presets: {', '.join(PRESETS)}")
    overrides = {f.name: getattr(self, f.name) for f in fields(LMConfig)
                 if getattr(self, f.name) is not None}
    return get_preset(self.preset, quick=self.quick, **overrides)


LMRunConfig = make_dataclass(
    "LMRunConfig",
    [("preset", str, field(default="ptb-small-alstm")),
     ("quick", bool, field(default=False)),
     ("resume", bool, field(default=False)),
     ("overwrite", bool, field(default=False))]
    + [(f.name, Optional[_HINTS[f.name]], field(default=None)) for f in fields(LMConfig)],  # noqa: UP045 (the runner parses typing.Optional)
    namespace={"validate": _validate, "resolve": _resolve},
)
LMRunConfig.__module__ = __name__
LMRunConfig.__doc__ = (
    "Config of the ``lm`` experiment: a preset name, control flags, and every LMConfig field "
    "(None = the preset's value)."
)


def _plot(ctx: RunContext, history: list[dict], curve: list[dict], cfg: LMConfig, title: str,
          asgd_epoch: int | None) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if history:
        ep = [r["epoch"] for r in history]
        ax.plot(ep, [r["train_ppl"] for r in history], "o-", ms=3, label="train (running, dropout on)")
        ax.plot(ep, [r["val_ppl"] for r in history], "o-", ms=3, label="validation")
        for c in cfg.lr_cuts:
            if c <= ep[-1]:
                ax.axvline(c + 0.5, color="grey", ls=":", lw=1)
        if asgd_epoch is not None:
            ax.axvline(asgd_epoch + 0.5, color="red", ls="--", lw=1, label="NT-ASGD switch")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (dotted: lr cut)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax = axes[1]
    if curve:
        ax.plot([c["step"] for c in curve], [math.exp(min(c["train_loss"], 50)) for c in curve], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"train perplexity (mean of {cfg.log_interval} batches)")
    ax.set_title("training progress")
    ctx.savefig(fig, "learning_curve.png")


def _history_rows(history: list[dict]) -> list[dict]:
    keys = ("epoch", "train_loss", "train_ppl", "val_loss", "val_ppl", "lr", "asgd", "batches",
            "train_time_s", "eval_time_s", "tokens_per_s")
    return [{k: r.get(k) for k in keys} for r in history]


@register(
    "lm",
    LMRunConfig,
    quick={"quick": True},
    summary="word-level LM on PTB/WikiText-2 (aLSTM, LSTM, AWD-LSTM); --set preset="
            + "|".join(PRESETS) + "; --resume continues from --out",
    needs_data=("ptb", "wikitext-2"),
    resumable=True,
)
def run(run_cfg, ctx: RunContext) -> dict:
    cfg = run_cfg.resolve()
    if cfg.core == "alstm" and not alstm_available():
        raise ConfigError(
            "core 'alstm' needs unbottleneck.adaptive.alstm.ALSTM, which is not available; "
            "use e.g. --set preset=ptb-small-lstm"
        )
    corpus = load_corpus(cfg.dataset, data_dir=ctx.data_dir)
    ckpt = ctx.out_dir / CHECKPOINT_NAME
    log = ctx.log
    if run_cfg.resume or ctx.resume:
        if not ckpt.exists():
            raise ConfigError(f"resume requested but there is no checkpoint at {ckpt}")
        try:
            trainer = LMTrainer.resume(cfg, corpus, ctx.out_dir, bar=ctx.bar, log=log, dist=ctx.dist)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        log(f"resuming from {ckpt} at epoch {trainer.epoch + 1}, batch {trainer.batch}")
    else:
        if ckpt.exists() and not (run_cfg.overwrite or run_cfg.quick):
            raise ConfigError(
                f"{ckpt} already exists: pass --resume (or --set resume=true) to continue that run, "
                "--set overwrite=true to start over, or choose another --out"
            )
        distributed.barrier(ctx.dist)  # every rank has looked before rank 0 deletes
        if ctx.writes:
            for name in (CHECKPOINT_NAME, BEST_NAME):
                (ctx.out_dir / name).unlink(missing_ok=True)
        (ctx.out_dir / f"checkpoint.rank{ctx.dist.rank}.pt").unlink(missing_ok=True)
        trainer = LMTrainer(cfg, corpus, ctx.out_dir, bar=ctx.bar, log=log, dist=ctx.dist)
    ctx.write_json("lm_config.json", cfg)

    def on_epoch_end(tr: LMTrainer) -> None:
        ctx.write_csv("metrics.csv", _history_rows(tr.history))

    def on_batch_end(tr: LMTrainer) -> None:
        # a safe point: on SIGINT/SIGTERM write a mid-epoch checkpoint and stop
        ctx.interrupt.check(tr.save_checkpoint, ctx.dist)

    status, message = "ok", ""
    diverged: TrainingDiverged | None = None
    try:
        with ctx.interrupt.deferring():
            summary = trainer.fit(on_batch_end=on_batch_end, on_epoch_end=on_epoch_end)
    except TrainingDiverged as exc:
        diverged = exc
        status, message = "diverged", str(exc)
        log(f"training diverged: {exc}")
        summary = {"epochs": trainer.epoch, "best_epoch": trainer.best_epoch,
                   "best_val_loss": trainer.best_val,
                   "best_val_ppl": math.exp(trainer.best_val) if math.isfinite(trainer.best_val)
                   else float("nan"),
                   "test_loss": float("nan"), "test_ppl": float("nan"),
                   "params": trainer.num_parameters, "asgd_epoch": trainer.asgd_epoch,
                   "tokens_per_s": float("nan"), "history": trainer.history, "curve": trainer.curve}

    history = summary["history"]
    ctx.write_csv("metrics.csv", _history_rows(history) or [{"epoch": 0}])
    ctx.write_csv("curve.csv", summary["curve"] or [{"step": 0}])
    title = f"{run_cfg.preset}{' (quick)' if run_cfg.quick else ''}: {cfg.core} on {cfg.dataset}"
    _plot(ctx, history, summary["curve"], cfg, title, summary["asgd_epoch"])

    headline = {
        "preset": run_cfg.preset, "core": cfg.core, "dataset": cfg.dataset, "status": status,
        "params": summary["params"], "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"], "best_val_ppl": summary["best_val_ppl"],
        "test_ppl": summary["test_ppl"], "tokens_per_s": summary["tokens_per_s"],
        "asgd_epoch": summary["asgd_epoch"],
    }
    shown = history[-25:]
    table = [[r["epoch"], f"{r['train_ppl']:.2f}", f"{r['val_ppl']:.2f}", f"{r['lr']:.3g}",
              "yes" if r["asgd"] else "", f"{r['tokens_per_s']:.0f}", f"{r['train_time_s']:.1f}"]
             for r in shown]
    limits = []
    if cfg.max_batches:
        limits.append(f"at most {cfg.max_batches} batches per epoch")
    if cfg.eval_tokens:
        limits.append(f"validation/test on their first {cfg.eval_tokens} tokens only")
    lines = [
        f"# lm: {title}",
        "",
        f"Command: `{ctx.command}`" if ctx.command else "",
        "",
        f"Status: **{status}**" + (f" — {message}" if message else ""),
        "",
        markdown_table(
            ["params", "epochs", "best epoch", "best val ppl", "test ppl (best weights)",
             "train tokens/s"],
            [[f"{summary['params']:,}", summary["epochs"], summary["best_epoch"],
              f"{summary['best_val_ppl']:.2f}", f"{summary['test_ppl']:.2f}",
              f"{summary['tokens_per_s']:.0f}"]]),
        "",
        f"Model: {cfg.core}, embedding {cfg.embedding_size}, hidden {cfg.hidden_size}, "
        f"{cfg.num_layers} layers" + (f", K = {cfg.adapt_size}" if cfg.core == "alstm" else "")
        + f", tied = {cfg.tie_weights}; dropouts e/i/h/a/o = {cfg.dropoute}/{cfg.dropouti}/"
        f"{cfg.dropouth}/{cfg.dropouta}/{cfg.dropouto}, wdrop {cfg.wdrop}.  Optimiser "
        f"{cfg.optimizer}, lr {cfg.lr:g} (cuts after epochs {list(cfg.lr_cuts)}), weight decay "
        f"{cfg.weight_decay:g}, clip {cfg.clip:g}, batch {cfg.batch_size}, BPTT "
        f"{'~' if cfg.variable_bptt else ''}{cfg.bptt}, AR/TAR {cfg.alpha:g}/{cfg.beta:g}."
        + (f"  Short run: {'; '.join(limits)}." if limits else ""),
        "",
        "Timings are wall-clock on the machine that ran this (shared machines are noisy).",
        "",
        f"## Per epoch{' (last 25)' if len(history) > 25 else ''}",
        "",
        markdown_table(["epoch", "train ppl", "val ppl", "lr", "averaged", "tokens/s",
                        "train s"], table) if table else "(no completed epoch)",
        "",
        "![learning curve](learning_curve.png)",
        "",
    ]
    ctx.write_text("report.md", "\n".join(lines))
    if diverged is not None:
        raise diverged  # after the report: the command exits non-zero, the outputs stay
    return {"summary": headline, "history": history, "message": message,
            "config": dataclasses.asdict(cfg), "checkpoint": str(ckpt)}
