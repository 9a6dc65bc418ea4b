"""``transformer-ffn``: the activation bottleneck in a small GPT's feed-forward blocks.

Questions (beyond the seeds, which test MLPs and LSTMs): is a transformer's GELU FFN
bottlenecked in the seed's sense, and do IAT-ReLU or an adaptive first projection help
at equal parameters and equal compute?

Every variant of :class:`~unbottleneck.models.TransformerLM` (``mlp`` with GELU,
``mlp-relu``, ``swiglu``, ``iat``, ``adaptive``) trains on the same corpus with the same optimiser (AdamW,
linear warm-up then cosine decay), learning rate, batch order and number of tokens, for
``seeds`` seeds; each variant's FFN width matches the ``mlp`` block's parameter count
(``match=params``) or multiply-adds (``match=flops``).  Reported: validation loss curves
per tokens seen and per training second, final validation and test perplexity (and bits
per character), tokens/s, parameter counts, and per layer the seed's diagnostics on
each FFN (:class:`~unbottleneck.diagnostics.BottleneckRecorder`): pre-activation
distribution and activation / transform / adaptation effect dispersion (std, IQR, MAD).

**Corpus: character-level PTB** (``level=char``, default).  On 2 CPU cores a
word-level model would spend most of its compute in the 10,000-way softmax and the
embedding (at d_model 128, 1.3 M multiply-adds per token against 0.13 M per FFN
block), hiding the FFN that is compared; with 50 characters the FFNs are about half of
the model's multiply-adds, and a 0.8 M-parameter model learns real structure within
minutes.  ``level=word`` is available.

``mlp-relu`` (the same block with a ReLU) is the control that tells what IAT-ReLU adds
to a plain ReLU; it was added after the first full run's seed-0 results were visible
(GELU far behind every other variant).  Each (variant, seed) run is stored when it
finishes (``OUT/runs/``, under that run's own config): ``--resume`` redoes only the
missing ones.  ``--set preset=gpt-gpu`` documents a GPU-sized run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import load_char_corpus, load_corpus
from ..diagnostics import BottleneckRecorder
from ..diagnostics.effect import spread
from ..models import TransformerLM
from ..models.ffn import MATCH_MODES
from .cache import RunCache
from .common import mean_std, require_lr, require_nonempty, require_positive
from .runner import RunContext, register
from .transformer_report import figures, report, summarize

LEVELS = ("char", "word")
#: variant name -> (TransformerLM ffn, its fixed options); the experiment's own options
#: (iat_basis, adaptive_policy) are added in build_model.
VARIANTS: dict[str, tuple[str, dict]] = {
    "mlp": ("mlp", {}),
    "mlp-relu": ("mlp", {"activation": "relu"}),
    "swiglu": ("swiglu", {}),
    "iat": ("iat", {}),
    "adaptive": ("adaptive", {}),
}
#: preset name -> field values that replace the defaults (fields left at their default only)
PRESETS: dict[str, dict] = {
    "cpu": {},
    "gpt-gpu": {"d_model": 384, "n_layers": 6, "n_heads": 6, "d_ff": 1536, "seq_len": 256, "batch_size": 64,
                "steps": 5000, "warmup": 200, "lr": 1e-3, "eval_every": 250, "seeds": 3, "device": "cuda"},
}


@dataclass
class TransformerFFNConfig:
    corpus: str = "ptb"
    level: str = "char"
    # mlp-relu: the ReLU control for iat (IAT-ReLU), added after the first results were seen
    variants: tuple[str, ...] = ("mlp", "mlp-relu", "swiglu", "iat", "adaptive")
    match: str = "params"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512  # the mlp reference width
    iat_basis: str = "piecewise_linear"  # the iat variant's IAT-ReLU (q dual, M = 4 d_ff)
    adaptive_policy: str = "sva"
    seq_len: int = 128
    batch_size: int = 32
    steps: int = 600
    warmup: int = 60
    lr: float = 2e-3  # one rate for every variant: none is tuned
    min_lr_ratio: float = 0.1  # the cosine ends at lr * this
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    eval_every: int = 100
    eval_batches: int = 8  # validation windows of the curves: eval_batches x batch_size
    final_eval_tokens: int = 0  # final validation / test prefix (0 = the whole split)
    record_batches: int = 2  # validation batches the diagnostics record
    seeds: int = 2
    seed: int = 0
    device: str = "cpu"
    preset: str = "cpu"

    def validate(self) -> None:
        require_nonempty(self, "variants")
        require_lr(self)
        require_positive(self, "d_model", "n_layers", "n_heads", "d_ff", "seq_len", "batch_size", "steps",
                         "eval_every", "eval_batches", "record_batches", "seeds")
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; choose from {', '.join(LEVELS)}")
        if self.match not in MATCH_MODES:
            raise ValueError(f"unknown match {self.match!r}; choose from {', '.join(MATCH_MODES)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0 <= self.warmup < self.steps:
            raise ValueError("warmup must be >= 0 and below steps")
        if not 0 < self.min_lr_ratio <= 1:
            raise ValueError("min_lr_ratio must be in (0, 1]")

    def __post_init__(self) -> None:
        """The preset's values go into every field left at its class default, when the
        config is built (so config.json, the device check and --resume see them)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key, value in PRESETS.get(self.preset, {}).items():
            if getattr(self, key) == defaults[key]:
                setattr(self, key, value)


def load_text(cfg: TransformerFFNConfig, data_dir):
    return (load_char_corpus if cfg.level == "char" else load_corpus)(cfg.corpus, data_dir=data_dir)


def build_model(cfg: TransformerFFNConfig, variant: str, vocab: int) -> TransformerLM:
    ffn, options = VARIANTS[variant]
    options = {**options, **{"iat": {"basis": cfg.iat_basis}, "adaptive": {"policy": cfg.adaptive_policy}}.get(ffn, {})}
    return TransformerLM(vocab, cfg.d_model, cfg.n_layers, cfg.n_heads, d_ff=cfg.d_ff, ffn=ffn,
                         max_len=cfg.seq_len, dropout=cfg.dropout, match=cfg.match, check_tokens=False,
                         device=cfg.device, **options)


def lr_factor(step: int, cfg: TransformerFFNConfig) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine down to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def windows(stream: torch.Tensor, seq_len: int, limit: int = 0) -> torch.Tensor:
    """Non-overlapping (n, seq_len + 1) input+target windows from the start of ``stream``
    (the first ``limit`` targets; 0 = all)."""
    n = (stream.numel() - 1) // seq_len
    if limit:
        n = min(n, max(1, limit // seq_len))
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)
    return stream[idx]


def next_token_loss(model: TransformerLM, b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of the model's predictions for a (B, T + 1) batch of windows:
    inputs ``b[:, :-1]``, targets ``b[:, 1:]``."""
    logits = model(b[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction=reduction)


@torch.no_grad()
def evaluate(model: TransformerLM, wins: torch.Tensor, batch: int, device: str) -> float:
    """Mean next-token cross-entropy (nats) over the windows."""
    model.eval()
    total, count = 0.0, 0
    for b in wins.split(batch):
        b = b.to(device)
        total += float(next_token_loss(model, b, reduction="sum"))
        count += b[:, 1:].numel()
    model.train()
    return total / count


def diagnostics(model: TransformerLM, wins: torch.Tensor, cfg: TransformerFFNConfig) -> dict:
    """Per block: the recorder's layers inside the FFN, with pre-activation quantiles and
    the effect's spread (std, IQR, MAD), in eval mode on ``record_batches`` batches."""
    model.eval()
    rec = BottleneckRecorder(model, max_samples=200_000, seed=cfg.seed)
    with rec, torch.no_grad():
        for b in wins[: cfg.record_batches * cfg.batch_size].split(cfg.batch_size):
            model(b[:, :-1].to(cfg.device))
    out: dict = {}
    for name, r in rec.records.items():
        block = int(name.split(".")[1])
        q = torch.quantile(r.preactivation.float(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])).tolist()
        out.setdefault(str(block), {})[name] = {
            "kind": r.kind, "activation": r.activation,
            "preactivation": {"q05": q[0], "q25": q[1], "median": q[2], "q75": q[3], "q95": q[4],
                              **spread(r.preactivation)},
            "effect": {**spread(r.effect), "share_beyond_0.05": float((r.effect.abs() > 0.05).double().mean())},
        }
    model.train()
    return out


def train_one(cfg: TransformerFFNConfig, variant: str, seed: int, corpus, bar) -> dict:
    torch.manual_seed(cfg.seed * 1000 + seed)  # every variant: the same seed per run index
    model = build_model(cfg, variant, corpus.vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    order = torch.Generator().manual_seed(cfg.seed * 1000 + seed)  # the same batches for every variant
    train = corpus.train
    val_curve = windows(corpus.valid, cfg.seq_len, cfg.eval_batches * cfg.batch_size * cfg.seq_len)
    offsets = torch.arange(cfg.seq_len + 1)
    curve, seconds, tokens = [], 0.0, 0
    for step in range(1, cfg.steps + 1):
        start = time.perf_counter()
        starts = torch.randint(0, train.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=order)
        b = train[starts[:, None] + offsets].to(cfg.device)
        loss = next_token_loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        train_loss = loss.item()  # one sync per step, inside the timed region
        seconds += time.perf_counter() - start
        tokens += b[:, 1:].numel()
        bar.update(1)
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{variant} seed {seed}: training loss {train_loss} at step {step}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            curve.append({"step": step, "tokens": tokens, "seconds": seconds, "train_loss": train_loss,
                          "val_loss": evaluate(model, val_curve, cfg.batch_size, cfg.device)})
    val = windows(corpus.valid, cfg.seq_len, cfg.final_eval_tokens)
    test = windows(corpus.test, cfg.seq_len, cfg.final_eval_tokens)
    val_loss = evaluate(model, val, cfg.batch_size, cfg.device)
    test_loss = evaluate(model, test, cfg.batch_size, cfg.device)
    return {"variant": variant, "seed": seed, "params": model.num_parameters(), "ffn_params": model.ffn_parameters(),
            "ffn_width": model.ffn_width, "multiply_adds_per_token": model.multiply_adds_per_token(cfg.seq_len),
            "curve": curve, "train_seconds": seconds, "tokens_per_s": tokens / seconds,
            "val_loss": val_loss, "test_loss": test_loss, "val_ppl": math.exp(val_loss), "test_ppl": math.exp(test_loss),
            "eval_tokens": {"valid": val[:, 1:].numel(), "test": test[:, 1:].numel()},
            "diagnostics": diagnostics(model, val, cfg)}


def sweep(cfg: TransformerFFNConfig, ctx: RunContext) -> dict[str, list[dict]]:
    corpus = load_text(cfg, ctx.data_dir)
    cache = RunCache(ctx)
    runs: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    with ctx.bar(len(cfg.variants) * cfg.seeds * cfg.steps, "transformer-ffn") as bar:
        for seed in range(cfg.seeds):  # seed-major: an interrupted run has every variant at seed 0
            for v in cfg.variants:
                bar.set_postfix_str(f"{v} seed {seed}")
                # stored under the run's own config: adding a variant keeps the others' results
                own = dataclasses.replace(cfg, variants=(v,), seeds=1)
                runs[v].append(cache.run(f"{v}-seed{seed}", own, train_one, cfg, v, seed, corpus, bar))
    return runs


@register(
    "transformer-ffn",
    TransformerFFNConfig,
    quick={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "seq_len": 32, "batch_size": 8,
           "steps": 6, "warmup": 2, "eval_every": 3, "eval_batches": 2, "final_eval_tokens": 2048,
           "record_batches": 1, "seeds": 1},
    summary="beyond the seeds: GELU vs SwiGLU vs IAT-ReLU vs adaptive FFNs in a small GPT (char-level PTB)",
    needs_data=("ptb",),
    resumable=True,
)
def run(cfg: TransformerFFNConfig, ctx: RunContext) -> dict:
    runs = sweep(cfg, ctx)
    ctx.write_csv("curves.csv", [{"variant": v, "seed": r["seed"], **c} for v, rs in runs.items()
                                 for r in rs for c in r["curve"]])
    summary = summarize(runs)
    figures(cfg, ctx, runs, summary)
    ctx.write_text("report.md", report(cfg, ctx, summary))
    return {"summary": summary,
            "runs": {v: [{k: r[k] for k in ("seed", "val_ppl", "test_ppl", "tokens_per_s", "train_seconds")}
                         for r in rs] for v, rs in runs.items()},
            "mean_std_val_ppl": {v: mean_std(r["val_ppl"] for r in rs) for v, rs in runs.items()}}
