"""Summary, figures and report of ``transformer-ffn`` (see :mod:`.transformer_ffn`)."""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import fmt, markdown_table, mean_std, plural
from .questions import QUESTIONS
from .runner import RunContext

#: which record stands for a block's FFN non-linearity, by kind (first found wins)
PRIMARY_KINDS = ("adaptive", "iat", "activation")
SPREADS = ("std", "iqr", "mad")


def primary_record(block: dict[str, dict]) -> tuple[str, dict]:
    """The record of a block's FFN non-linearity: the adaptation effect of an adaptive
    FFN, the IAT's transform effect, else the activation's effect."""
    for kind in PRIMARY_KINDS:
        for name, rec in sorted(block.items()):
            if rec["kind"] == kind:
                return name, rec
    raise ValueError("the block recorded nothing")


def _layers(rs: list[dict]) -> list[dict[str, Any]]:
    """Per block, the primary record's statistics as mean ± std over seeds."""
    out = []
    for block in sorted(rs[0]["diagnostics"], key=int):
        recs = [primary_record(r["diagnostics"][block]) for r in rs]
        name, first = recs[0]
        row = {"block": int(block), "record": name, "kind": first["kind"], "activation": first["activation"]}
        for part in ("preactivation", "effect"):
            keys = recs[0][1][part].keys()
            row[part] = {k: mean_std(rec[part][k] for _, rec in recs) for k in keys}
        out.append(row)
    return out


def _lower_in(rs: list[dict], other: list[dict]) -> int:
    """Seeds (paired by index) in which ``rs`` ends with the lower validation perplexity."""
    return sum(r["val_ppl"] < b["val_ppl"] for r, b in zip(rs, other, strict=False))


def summarize(runs: dict[str, list[dict]]) -> dict[str, Any]:
    base = runs.get("mlp")
    out: dict[str, Any] = {}
    for v, rs in runs.items():
        s = {
            "params": rs[0]["params"], "ffn_params": rs[0]["ffn_params"], "ffn_width": rs[0]["ffn_width"],
            "multiply_adds_per_token": rs[0]["multiply_adds_per_token"],
            "val_ppl": mean_std(r["val_ppl"] for r in rs), "test_ppl": mean_std(r["test_ppl"] for r in rs),
            "val_bpc": mean_std(r["val_loss"] / math.log(2) for r in rs),
            "test_bpc": mean_std(r["test_loss"] / math.log(2) for r in rs),
            "tokens_per_s": mean_std(r["tokens_per_s"] for r in rs),
            "layers": _layers(rs), "seeds": len(rs),
        }
        if base is not None:
            n = min(len(rs), len(base))
            s["params_vs_mlp"] = s["params"] / base[0]["params"] - 1
            s["ffn_params_vs_mlp"] = s["ffn_params"] / base[0]["ffn_params"] - 1
            s["time_vs_mlp"] = mean_std(b["tokens_per_s"] / r["tokens_per_s"]
                                        for r, b in zip(rs[:n], base[:n], strict=True))
            s["val_lower_than_mlp"] = _lower_in(rs, base)
            s["paired_seeds"] = n
        relu = runs.get("mlp-relu")
        if relu is not None:
            s["val_lower_than_relu"] = _lower_in(rs, relu)
        out[v] = s
    return out


def _band(ax, x, ys: torch.Tensor, label: str) -> None:
    line, = ax.plot(x, ys.mean(0).numpy(), label=label)
    if ys.shape[0] > 1:
        ax.fill_between(x, ys.min(0).values.numpy(), ys.max(0).values.numpy(), color=line.get_color(), alpha=0.2)


def figures(cfg, ctx: RunContext, runs: dict[str, list[dict]], summary: dict) -> None:
    import matplotlib.pyplot as plt

    unit = "bits / char" if cfg.level == "char" else "nats / word"
    scale = 1 / math.log(2) if cfg.level == "char" else 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for v, rs in runs.items():
        val = torch.tensor([[c["val_loss"] * scale for c in r["curve"]] for r in rs])
        tokens = [c["tokens"] for c in rs[0]["curve"]]
        _band(axes[0], tokens, val, v)
        secs = torch.tensor([[c["seconds"] for c in r["curve"]] for r in rs]).mean(0).numpy()
        _band(axes[1], secs, val, v)
    for ax, xlabel in zip(axes, ("training tokens", "training seconds (mean over seeds)"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"validation loss ({unit}, subset)")
        ax.legend(fontsize=8)
    fig.suptitle(f"transformer-ffn: validation curves (mean, min-max over {plural(cfg.seeds, 'seed')})", fontsize=10)
    ctx.savefig(fig, "curves.png")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for v, s in summary.items():
        blocks = [row["block"] for row in s["layers"]]
        mid = [row["preactivation"]["median"]["mean"] for row in s["layers"]]
        lo = [row["preactivation"]["q05"]["mean"] for row in s["layers"]]
        hi = [row["preactivation"]["q95"]["mean"] for row in s["layers"]]
        line, = axes[0].plot(blocks, mid, "o-", label=v)
        axes[0].fill_between(blocks, lo, hi, color=line.get_color(), alpha=0.15)
        for ax, key in ((axes[1], "iqr"), (axes[2], "std")):
            ax.plot(blocks, [row["effect"][key]["mean"] for row in s["layers"]], "o-", label=v)
    axes[0].set_ylabel("pre-activation: median, 5-95 % band")
    axes[1].set_ylabel("effect IQR")
    axes[2].set_ylabel("effect std")
    for ax in axes:
        ax.set_xlabel("block")
        ax.set_xticks(range(cfg.n_layers))
        ax.legend(fontsize=8)
    for ax in axes[1:]:
        ax.set_yscale("log")
    fig.suptitle("FFN non-linearity across depth: activation (mlp, swiglu), transform (iat), adaptation "
                 "(adaptive) effect", fontsize=10)
    ctx.savefig(fig, "depth.png")


def _setup(cfg) -> str:
    return (f"{cfg.level}-level {cfg.corpus.upper()}; decoder-only pre-LN transformer, d_model {cfg.d_model}, "
            f"{cfg.n_layers} blocks, {cfg.n_heads} heads, learned positions, tied decoder, context {cfg.seq_len}; "
            f"FFN widths matched to the mlp block of width {cfg.d_ff} by {cfg.match}.  iat: IAT-ReLU with "
            f"{cfg.iat_basis} bases, M = 4 x width, q dual; adaptive: first projection AdaptiveLinear "
            f"({cfg.adaptive_policy}, policy conditioned on the block input).  AdamW (betas 0.9/0.95, weight "
            f"decay {cfg.weight_decay} on matrices), lr {cfg.lr} for every variant (one rate, no variant tuned: "
            f"equal tuning budget), {cfg.warmup} warm-up steps then cosine to {cfg.min_lr_ratio} x lr, clip "
            f"{cfg.grad_clip}, dropout {cfg.dropout}; {cfg.steps} steps of {cfg.batch_size} x {cfg.seq_len} "
            f"tokens ({cfg.steps * cfg.batch_size * cfg.seq_len:,} tokens) with the same batches for every "
            f"variant; {plural(cfg.seeds, 'seed')}, mean ± std.  Final perplexities on "
            f"{'the whole' if not cfg.final_eval_tokens else f'the first {cfg.final_eval_tokens:,} tokens of the'} "
            f"validation / test split in non-overlapping windows; curves on {cfg.eval_batches * cfg.batch_size} "
            f"validation windows.  Diagnostics: BottleneckRecorder on {cfg.record_batches} validation batches "
            f"of the trained model.")


def answers(summary: dict) -> list[str]:
    """The stated questions with their measured answers (the same text as ``reproduce``'s
    "Beyond the seeds" rows: :mod:`.questions`), one line each."""
    return [f"**{q.question}** {q.answer({'summary': summary})}" for q in QUESTIONS]


def report(cfg, ctx: RunContext, summary: dict) -> str:
    scale = "bpc" if cfg.level == "char" else "nats"
    rows = [[v, s["ffn_width"], f"{s['params']:,}", f"{s['ffn_params']:,}",
             f"{s.get('params_vs_mlp', 0):+.2%}", f"{s['multiply_adds_per_token']:,}",
             fmt(s["val_ppl"], 3), fmt(s["test_ppl"], 3), fmt(s["val_bpc"], 3),
             fmt(s["tokens_per_s"], 0), fmt(s["time_vs_mlp"], 2) if "time_vs_mlp" in s else "n/a"]
            for v, s in summary.items()]
    layer_rows = []
    for v, s in summary.items():
        for row in s["layers"]:
            p, e = row["preactivation"], row["effect"]
            layer_rows.append([v, row["block"], f"`{row['record']}` ({row['kind']})",
                               f"{p['q05']['mean']:.2f} / {p['median']['mean']:.2f} / {p['q95']['mean']:.2f}",
                               *(f"{e[k]['mean']:.3g}" for k in SPREADS), f"{e['share_beyond_0.05']['mean']:.1%}"])
    return "\n".join([
        "# transformer-ffn: the activation bottleneck in a small GPT's feed-forward blocks",
        "",
        f"Command: `{ctx.command}`" if ctx.command else "",
        "",
        "Beyond the seeds: stated questions, not seed claims.  " + _setup(cfg),
        "",
        markdown_table(["variant", "FFN width", "params", "FFN params", "params vs mlp", "mult-adds / token",
                        "val ppl", "test ppl", f"val {scale}", "tokens / s", "time vs mlp"], rows),
        "",
        "Answers, as measured:",
        "",
        *(f"* {line}" for line in answers(summary)),
        "",
        "![validation curves](curves.png)",
        "",
        "Per block, the record standing for the FFN's non-linearity (means over seeds): pre-activation 5 % / "
        "median / 95 % quantiles and the effect's spread.  The effect is the activation minus its "
        "linearisation at 0 (GELU: slope 1/2; SiLU: slope 1/2), for the IAT the transform minus the same "
        "transform with ReLU linearised (z / 2 for the dual basis), for the adaptive FFN the adaptation "
        "effect (its output after the GELU minus the static, linearised map's).",
        "",
        markdown_table(["variant", "block", "record", "pre-act q05 / median / q95", "effect std", "effect IQR",
                        "effect MAD", "share abs(effect) > 0.05"], layer_rows),
        "",
        "![diagnostics across depth](depth.png)",
        "",
    ])
