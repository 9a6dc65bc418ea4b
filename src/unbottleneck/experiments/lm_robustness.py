"""``lm-robustness``: how sensitive are aLSTM and LSTM to their dropout rates?

The seed's study: sample the dropout rates uniformly within ``±radius`` (0.1)
of the configured ones, train every sample briefly, and compare the spread of
validation perplexities (seed: aLSTM tight, LSTM half fail with a heavy upper
tail).  Here, on CPU:

* models are presets (default the equal-size ``ptb-small-alstm`` and
  ``ptb-small-lstm``); every sample trains each model for ``epochs`` epochs of
  at most ``max_batches`` batches and is validated on the first
  ``eval_tokens`` validation tokens;
* samples are *paired*: sample ``s`` draws one offset per dropout kind
  (e, i, h, a, o, wdrop) and one training seed, shared by all models; a model
  uses the offsets of the rates it has (``dropouta`` only for the aLSTM,
  ``wdrop`` only for AWD-LSTM); rates are clipped to ``[0, max_rate]``;
* a run *diverged* when its loss became NaN/inf (or the validation loss is
  not finite), and *did not converge* when its validation perplexity is above
  ``fail_ppl`` (default 0: the add-one unigram perplexity of the same
  validation tokens, i.e. the model did not beat word frequencies).

Defaults: 20 paired samples of 200 batches of 10 sequences (``batch_size``; 0
keeps the preset's 20), validated on 10,000 tokens: about 45 s per pair on 2
cores.  Fewer updates do not work: after ~100 batches both small models still sit
on the unigram plateau (val ppl ~700), so learning cannot be told from failing;
after 200 updates of batch 10 both are at ~610.  The seed's study (~100 samples,
a few full epochs each) is ``--set samples=100 --set epochs=3 --set max_batches=0
--set eval_tokens=0 --set batch_size=0`` on a GPU (``device`` is ``auto``).
Every finished run is stored (``OUT/runs/``), so ``--resume`` redoes only the
missing ones.

Outputs: ``samples.csv`` (one row per run), ``robustness.png`` (box + strip
plot and histogram of validation perplexity per model), ``report.md``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import dataclass

import torch

from ..data.corpus import load_corpus, unigram_perplexity
from ..lm import LMTrainer, TrainingDiverged, alstm_available, get_preset
from .cache import RunCache
from .common import markdown_table, mean_std, plural, require_positive, require_presets
from .runner import ConfigError, RunContext, register

RATES = ("dropoute", "dropouti", "dropouth", "dropouta", "dropouto", "wdrop")


@dataclass
class LMRobustnessConfig:
    models: tuple[str, ...] = ("ptb-small-alstm", "ptb-small-lstm")
    samples: int = 20
    radius: float = 0.1
    max_rate: float = 0.95
    epochs: int = 1
    max_batches: int = 200
    batch_size: int = 10  # 0 = the preset's
    eval_tokens: int = 10000
    fail_ppl: float = 0.0
    tiny: bool = False  # shrink the models to quick sizes (smoke runs)
    seed: int = 0
    device: str = "auto"

    def validate(self) -> None:
        require_presets(self)
        require_positive(self, "samples", "epochs")
        if self.max_batches < 0 or self.eval_tokens < 0 or self.batch_size < 0:
            raise ValueError("max_batches, eval_tokens and batch_size must be >= 0 (0 = no limit / "
                             "the preset's)")
        if not 0.0 <= self.radius <= 1.0:
            raise ValueError(f"radius must be in [0, 1], got {self.radius}")
        if not 0.0 < self.max_rate < 1.0:
            raise ValueError(f"max_rate must be in (0, 1), got {self.max_rate}")
        if self.fail_ppl < 0:
            raise ValueError("fail_ppl must be >= 0 (0 = the unigram perplexity)")


def sample_offsets(samples: int, radius: float, seed: int) -> list[dict[str, float]]:
    """One uniform offset in ``[-radius, radius]`` per rate kind and sample (paired design)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(samples, len(RATES), generator=gen, dtype=torch.float64)
    offsets = (2.0 * u - 1.0) * radius
    return [dict(zip(RATES, row.tolist(), strict=True)) for row in offsets]


def perturbed_rates(base: dict[str, float], offsets: dict[str, float], max_rate: float,
                    core: str) -> dict[str, float]:
    """The sampled rates a model of ``core`` uses (only the rates it has)."""
    out = {}
    for k in RATES:
        if k == "dropouta" and core != "alstm":
            continue
        if k == "wdrop" and core != "awd-lstm":
            continue
        out[k] = round(min(max(base[k] + offsets[k], 0.0), max_rate), 6)
    return out


def _stats(values: list[float]) -> dict[str, float]:
    """:func:`~.common.mean_std` plus median and quartiles (NaN when empty)."""
    nan = float("nan")
    qs = ([nan] * 3 if not values else values * 3 if len(values) == 1
          else statistics.quantiles(values, n=4, method="inclusive"))
    median = statistics.median(values) if values else nan
    return {**mean_std(values), "median": median, "q1": qs[0], "q3": qs[2]}


def _train_sample(run_cfg, corpus, threshold: float) -> dict:
    """One brief training: status (ok / diverged / not converged), val and train ppl, time."""
    start = time.perf_counter()
    status, val_ppl, train_ppl, message, params = "ok", float("nan"), float("nan"), "", None
    try:
        trainer = LMTrainer(run_cfg, corpus)
        params = trainer.num_parameters
        last = trainer.fit()["history"][-1]
        val_ppl, train_ppl = last["val_ppl"], last["train_ppl"]
        if not math.isfinite(last["val_loss"]):
            status = "diverged"
        elif val_ppl > threshold:
            status = "not converged"
    except TrainingDiverged as exc:
        status, message = "diverged", str(exc)
    return {"val_ppl": val_ppl, "train_ppl": train_ppl, "status": status,
            "time_s": round(time.perf_counter() - start, 2), "message": message, "params": params}


@register(
    "lm-robustness",
    LMRobustnessConfig,
    quick={"samples": 2, "max_batches": 3, "eval_tokens": 600, "tiny": True},
    summary="dropout-rate robustness: random rates within ±0.1, brief training, val ppl spread "
            "of aLSTM vs LSTM",
    needs_data=("ptb",),
    resumable=True,
)
def run(cfg: LMRobustnessConfig, ctx: RunContext) -> dict:
    import matplotlib.pyplot as plt

    batch = {"batch_size": cfg.batch_size} if cfg.batch_size else {}
    base_cfgs = {m: get_preset(m, quick=cfg.tiny, epochs=cfg.epochs, max_batches=cfg.max_batches,
                               eval_tokens=cfg.eval_tokens, device=cfg.device, lr_cuts=(), **batch)
                 for m in cfg.models}
    if any(c.core == "alstm" for c in base_cfgs.values()) and not alstm_available():
        raise ConfigError("the alstm presets need unbottleneck.adaptive.alstm.ALSTM, which is not "
                          "available; use e.g. --set models=ptb-small-lstm")
    datasets = {c.dataset for c in base_cfgs.values()}
    corpora = {d: load_corpus(d, data_dir=ctx.data_dir) for d in datasets}
    thresholds = {}
    for d, corpus in corpora.items():
        valid = corpus.valid[: cfg.eval_tokens] if cfg.eval_tokens else corpus.valid
        thresholds[d] = cfg.fail_ppl or unigram_perplexity(corpus.train, valid, corpus.vocab_size)

    offsets = sample_offsets(cfg.samples, cfg.radius, cfg.seed)
    cache = RunCache(ctx)
    rows: list[dict] = []
    params: dict[str, int] = {}
    with ctx.bar(cfg.samples * len(cfg.models), "lm-robustness") as bar:
        for s, off in enumerate(offsets):
            for m in cfg.models:
                base = base_cfgs[m]
                rates = perturbed_rates(dataclasses.asdict(base), off, cfg.max_rate, base.core)
                run_cfg = dataclasses.replace(base, seed=cfg.seed * 1000 + s, **rates)
                bar.set_postfix_str(f"sample {s} {m}")
                key = f"sample{s}-{m}"
                row = dict(cache.run(key, run_cfg, _train_sample, run_cfg, corpora[base.dataset],
                                     thresholds[base.dataset]))
                params[m] = row.pop("params", params.get(m))
                rows.append({"sample": s, "model": m, "core": base.core, **rates, "seed": run_cfg.seed,
                             **{k: float(v) if k in ("val_ppl", "train_ppl") else v for k, v in row.items()}})
                ctx.write_csv("samples.csv", rows)  # after every run: partial results survive
                bar.update(1)

    summary = {}
    for m in cfg.models:
        mine = [r for r in rows if r["model"] == m]
        ok = [r["val_ppl"] for r in mine if r["status"] == "ok"]
        finite = [r["val_ppl"] for r in mine if r["status"] != "diverged"]
        summary[m] = {
            "runs": len(mine),
            "ok": len(ok),
            "diverged": sum(r["status"] == "diverged" for r in mine),
            "not_converged": sum(r["status"] == "not converged" for r in mine),
            "val_ppl_all_finite": _stats(finite),
            "val_ppl_ok": _stats(ok),
            "mean_time_s": statistics.fmean(r["time_s"] for r in mine),
        }

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    data = [[r["val_ppl"] for r in rows if r["model"] == m and r["status"] != "diverged"]
            for m in cfg.models]
    positions = list(range(1, len(cfg.models) + 1))
    nonempty = [(p, d) for p, d in zip(positions, data, strict=True) if d]
    if nonempty:
        ax.boxplot([d for _, d in nonempty], positions=[p for p, _ in nonempty], widths=0.5,
                   showfliers=False)
    jitter = torch.Generator().manual_seed(0)
    for p, d, m in zip(positions, data, cfg.models, strict=True):
        xs = (p + 0.12 * (torch.rand(len(d), generator=jitter) - 0.5) * 2).tolist()
        ax.scatter(xs, d, s=14, alpha=0.7, zorder=3)
        n_div = summary[m]["diverged"]
        if n_div:
            ax.annotate(f"{n_div} diverged", (p, 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=8, color="red")
    for d in datasets:
        ax.axhline(thresholds[d], color="grey", ls=":", lw=1, label=f"fail threshold ({d})")
    ax.set_xticks(positions)
    ax.set_xticklabels(cfg.models, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("validation perplexity")
    ax.set_title(f"{cfg.samples} dropout samples (±{cfg.radius})")
    ax.legend(fontsize=7)
    ax = axes[1]
    finite_all = [v for d in data for v in d]
    if finite_all:
        lo, hi = min(finite_all), max(finite_all)
        bins = torch.logspace(math.log10(lo * 0.95), math.log10(hi * 1.05), 20).tolist() \
            if hi > lo else 10
        for d, m in zip(data, cfg.models, strict=True):
            if d:
                ax.hist(d, bins=bins, alpha=0.5, label=m)
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("validation perplexity")
    ax.set_ylabel("runs")
    ax.set_title("distribution")
    ctx.savefig(fig, "robustness.png")

    header = ["model", "params", "runs", "ok", "diverged", "not converged", "median val ppl",
              "IQR", "min", "max", "s/run"]
    table = []
    for m, s in summary.items():
        st = s["val_ppl_all_finite"]
        table.append([m, f"{params[m]:,}", s["runs"], s["ok"], s["diverged"], s["not_converged"],
                      f"{st['median']:.1f}", f"{st['q1']:.1f}–{st['q3']:.1f}", f"{st['min']:.1f}",
                      f"{st['max']:.1f}", f"{s['mean_time_s']:.0f}"])
    base_rates = {m: perturbed_rates(dataclasses.asdict(c), dict.fromkeys(RATES, 0.0), 1.0, c.core)
                  for m, c in base_cfgs.items()}
    lines = [
        "# lm-robustness: validation perplexity under random dropout rates",
        "",
        f"Command: `{ctx.command}`" if ctx.command else "",
        "",
        f"{cfg.samples} paired samples: each dropout rate = configured rate + U(-{cfg.radius}, "
        f"{cfg.radius}), clipped to [0, {cfg.max_rate}]; each model trains {plural(cfg.epochs, 'epoch')}"
        + (f" with batch size {cfg.batch_size}" if cfg.batch_size else "")
        + (f" of at most {cfg.max_batches} batches" if cfg.max_batches else "")
        + " and is validated on "
        + (f"the first {cfg.eval_tokens} validation tokens" if cfg.eval_tokens else "the full validation set")
        + ".  'not converged' = val ppl above the add-one unigram perplexity "
        + ", ".join(f"{d}: {t:.1f}" for d, t in thresholds.items())
        + (f" (fail_ppl={cfg.fail_ppl})" if cfg.fail_ppl else "") + ".",
        "",
        markdown_table(header, table),
        "",
        "Configured (centre) rates: " + "; ".join(
            f"{m}: " + ", ".join(f"{k} {v:g}" for k, v in r.items()) for m, r in base_rates.items()),
        "",
        "Brief training on CPU is a proxy for the seed's 'a few epochs' on GPU; wall times are "
        "from a shared machine.",
        "",
        "![robustness](robustness.png)",
        "",
    ]
    ctx.write_text("report.md", "\n".join(lines))
    return {"summary": summary, "thresholds": thresholds, "params": params, "runs": rows}
