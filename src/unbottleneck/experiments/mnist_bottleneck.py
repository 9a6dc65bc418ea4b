"""``mnist-bottleneck``: the seed's MNIST study of the activation function bottleneck.

A feed-forward MNIST classifier is trained with static layers (sigmoid, ReLU)
and with adaptive layers (SVA or IOA :class:`~unbottleneck.AdaptiveLinear`,
linear policy) followed by a sigmoid or by no activation at all, in one of two
regimes (``--set regime=seed|modern``, :data:`REGIME_DEFAULTS`):

* ``seed`` (default): the seed's *bottlenecked* set-up.  One hidden layer of 500
  (what the seed calls a two-layer net), plain SGD lr 0.1, batch 100, 8 epochs,
  the starter scripts' truncated-normal init, SVA policy ``pi(x) = P x`` with no
  bias.  Gentle training keeps the static net's pre-activations narrow (std near
  the seed's 0.7-0.8), where the sigmoid is almost linear.
* ``modern``: the starter MLP 784 -> 128 -> 32 -> 10 trained with Adam, the
  policy ``pi = P x + 1``.  Adam spreads the pre-activations to std ~5, so the
  static sigmoid is far from its linear regime and the seed's figure cannot appear.
After training, :class:`~unbottleneck.diagnostics.BottleneckRecorder` measures
on test images:

* the pre-activation distribution of the hidden layers, and
* the activation effect ``phi(a) - (phi'(0) a + phi(0))`` of static layers vs the
  adaptation effect of adaptive ones (the output minus the same layer with the
  policy fixed to 1 and ``phi`` linearised, e.g. ``0.25 (W2 W1 x + b) + 0.5``).

Seed numbers: sigmoid 95%, ReLU 97%, SVA + sigmoid 97%, SVA without activation
about 98% test accuracy; static effects sharply peaked at 0 with few values
beyond 0.05, SVA effects about two orders of magnitude more dispersed.

Our choices where the seed is silent (all in the config): pixels in [0, 1];
static layers initialised as the starter code does (truncated normal, std
1/sqrt(fan_in), zero bias); all 60,000 training images; accuracy on the 10,000
test images after the last epoch.  The effect's spread is reported as std, IQR
and MAD (:func:`~unbottleneck.diagnostics.effect.spread`), since the seed names
no statistic and a peaked, heavy-tailed static effect makes them disagree; the
``mnist-dispersion`` claim judges the IQR ratio.  Adaptive variants also report
the effect of the same network re-parameterised (``W2 / c``, policy ``* c``),
which is identical as a function but not in its measured effect.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import choice
from ..adaptive import POLICIES, AdaptiveLinear
from ..diagnostics import BottleneckRecorder, summarize
from ..diagnostics.effect import spread
from ..training import seed_everything
from .common import (
    accuracy,
    count_parameters,
    fmt,
    markdown_table,
    mean_std,
    plural,
    require_lr,
    require_nonempty,
    require_positive,
)
from .runner import RunContext, register

STATIC_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "none": nn.Identity}
SEED_ACCURACY = {"sigmoid": 0.95, "relu": 0.97, "sva-sigmoid": 0.97, "sva-none": 0.98}
#: Variant prefixes -> (AdaptiveLinear policy, policy bias).  ``None`` takes the config's
#: ``policy_bias``; the ``0`` / ``1`` forms pin it: ``sva0`` is the seed's bias-free
#: ``pi = P x`` (starts near 0), ``sva1`` the ``pi = P x + 1`` policy (starts at the static map).
ADAPTIVE_PREFIXES: dict[str, tuple[str, bool | None]] = {
    **{p: (p, None) for p in POLICIES}, "ioa": ("io", None),
    "sva0": ("sva", False), "sva1": ("sva", True), "ioa0": ("io", False), "ioa1": ("io", True),
}
REGIMES = ("seed", "modern")
#: What each regime sets (fields left at ``None`` in the config take these).
#: ``seed``: the seed's bottlenecked set-up, read from its text and the TensorFlow starter
#: scripts of its time: one hidden layer of 500 (the seed's "two-layer" net), plain SGD
#: lr 0.1, batch 100, 8 epochs, truncated-normal init for every weight, SVA policy
#: ``pi = P x`` without bias.  ``modern``: this library's first set-up, the starter MLP
#: 784-128-32-10 trained with Adam, which spreads the pre-activations far wider.
REGIME_DEFAULTS: dict[str, dict] = {
    "seed": {"variants": ("sigmoid", "relu", "sva-sigmoid", "sva-none", "sva1-sigmoid"),
             "hidden": (500,), "epochs": 8, "optimizer": "sgd", "lr": 0.1, "policy_bias": False,
             "adaptive_init": "starter"},
    "modern": {"variants": ("sigmoid", "relu", "sva-sigmoid", "sva-none", "ioa-sigmoid", "ioa-none"),
               "hidden": (128, 32), "epochs": 10, "optimizer": "adam", "lr": 1e-3, "policy_bias": True,
               "adaptive_init": "orthogonal"},
}
ADAPTIVE_INITS = ("starter", "orthogonal")


def parse_variant(name: str) -> tuple[str | None, str, bool | None]:
    """``"sigmoid"`` -> (None, "sigmoid", None); ``"sva0-none"`` -> ("sva", "none", False)."""
    prefix, _, act = name.rpartition("-")
    if act not in STATIC_ACTIVATIONS or (prefix and prefix not in ADAPTIVE_PREFIXES):
        raise ValueError(
            f"unknown variant {name!r}; use an activation ({', '.join(STATIC_ACTIVATIONS)}) or "
            f"<policy>-<activation> with policy in {', '.join(ADAPTIVE_PREFIXES)} (e.g. sva-sigmoid, "
            "sva1-sigmoid, ioa-none)"
        )
    if not prefix and act == "none":
        raise ValueError("variant 'none' would be a purely linear model; use e.g. sva-none")
    if not prefix:
        return None, act, None
    policy, bias = ADAPTIVE_PREFIXES[prefix]
    return policy, act, bias


@dataclass
class MNISTBottleneckConfig:
    """``regime`` fills every field left at ``None`` (:data:`REGIME_DEFAULTS`)."""

    regime: str = "seed"
    variants: Optional[tuple[str, ...]] = None  # noqa: UP045 (the runner parses typing.Optional)
    hidden: Optional[tuple[int, ...]] = None  # noqa: UP045
    epochs: Optional[int] = None  # noqa: UP045
    batch_size: int = 100
    optimizer: Optional[str] = None  # noqa: UP045  "adam" or "sgd" (plain SGD)
    lr: Optional[float] = None  # noqa: UP045
    policy_bias: Optional[bool] = None  # noqa: UP045  False: the seed's pi = P x
    adaptive_init: Optional[str] = None  # noqa: UP045  "starter" or "orthogonal"
    seeds: int = 3
    n_train: int = 60000  # first n training images (all by default)
    sva_rank: int = 0  # 0: min(in, out) per layer
    policy_net: str = "linear"
    policy_init_scale: float = 0.1
    diag_samples: int = 10000  # test images fed to the recorder
    effect_threshold: float = 0.05
    seed: int = 0
    device: str = "cpu"

    def resolve(self) -> MNISTBottleneckConfig:
        """A copy with the regime's values in every field left at ``None``."""
        if self.regime not in REGIMES:
            raise ValueError(f"unknown regime {self.regime!r}; choose one of {', '.join(REGIMES)}")
        filled = {k: v for k, v in REGIME_DEFAULTS[self.regime].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def validate(self) -> None:
        cfg = self.resolve()
        require_nonempty(cfg, "variants")
        parsed = [parse_variant(v) for v in cfg.variants]
        if not cfg.hidden or min(cfg.hidden) < 1:
            raise ValueError("hidden must be a non-empty list of positive sizes")
        require_positive(cfg, "epochs", "batch_size", "seeds", "n_train", "diag_samples")
        if cfg.sva_rank < 0:
            raise ValueError("sva_rank must be >= 0 (0 = full rank)")
        require_lr(cfg)
        choice("optimizer", cfg.optimizer, ("adam", "sgd"))
        choice("adaptive_init", cfg.adaptive_init, ADAPTIVE_INITS)
        if not cfg.policy_bias and cfg.policy_net != "linear" and any(
                policy and bias is not True for policy, _, bias in parsed):
            raise ValueError("policy_bias=false needs policy_net=linear (the seed's pi = P x)")


class MNISTNet(nn.Module):
    """``x (..., 784) -> [layer -> activation] per hidden size -> Linear -> logits (..., 10)``.

    ``cfg`` must be resolved (:meth:`MNISTBottleneckConfig.resolve`).
    """

    def __init__(self, variant: str, cfg: MNISTBottleneckConfig, in_features: int = 784) -> None:
        super().__init__()
        policy, act, bias = parse_variant(variant)
        layers: list[nn.Module] = []
        width = in_features
        for h in cfg.hidden:
            if policy is None:
                lin = nn.Linear(width, h)
                _starter_init(lin)
                layers.append(lin)
            else:
                rank = (cfg.sva_rank or None) if policy == "sva" else None
                layer = AdaptiveLinear(width, h, policy=policy, rank=rank, policy_net=cfg.policy_net,
                                       policy_init_scale=cfg.policy_init_scale,
                                       policy_bias=cfg.policy_bias if bias is None else bias)
                if cfg.adaptive_init == "starter":
                    _starter_init_adaptive(layer)
                layers.append(layer)
            layers.append(STATIC_ACTIVATIONS[act]())
            width = h
        head = nn.Linear(width, 10)
        _starter_init(head)
        layers.append(head)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trunc_normal(w: torch.Tensor) -> None:
    """The starter scripts' init: truncated normal, std 1/sqrt(fan_in), cut at 2 std."""
    std = 1.0 / math.sqrt(w.shape[1])
    nn.init.trunc_normal_(w, std=std, a=-2.0 * std, b=2.0 * std)


@torch.no_grad()
def _starter_init(lin: nn.Linear) -> None:
    _trunc_normal(lin.weight)
    lin.bias.zero_()


@torch.no_grad()
def _starter_init_adaptive(layer: AdaptiveLinear) -> None:
    """Static weights of an adaptive layer drawn like the starter's (the policy keeps its own)."""
    for w in ([layer.weight_in, layer.weight_out] if layer.policy == "sva" else [layer.weight]):
        _trunc_normal(w)
    if layer.bias is not None:
        layer.bias.zero_()


CHECKPOINT_KIND = "mnist-bottleneck"
CHECKPOINT_FORMAT = 2
RESCALE_FACTORS = (0.5, 2.0)


@torch.no_grad()
def measure_effects(model: nn.Module, x: torch.Tensor, threshold: float,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Pooled hidden-layer (pre-activations, effects) on ``x`` (N, 784) and the per-layer summary.

    Static layers give their activation effect, adaptive ones their adaptation effect.
    """
    model.eval()
    adaptive = any(isinstance(m, AdaptiveLinear) for m in model.modules())
    with BottleneckRecorder(model, max_samples=400_000, seed=seed) as rec:
        for i in range(0, x.shape[0], 1000):
            model(x[i:i + 1000])
    pre, eff = rec.pooled("adaptive" if adaptive else "activation")
    return pre, eff, rec.summary(threshold)


@torch.no_grad()
def rescaled_effect(model: nn.Module, x: torch.Tensor, c: float, seed: int) -> torch.Tensor:
    """The adaptation effect of :func:`reparameterised` ``(model, c)`` on ``x``.

    The network is unchanged, but the effect (measured against the layer with pi fixed
    to 1) is not: it depends on the parameterisation, not only on the learned function.
    """
    return measure_effects(reparameterised(model, c), x, 0.05, seed)[1]


@torch.no_grad()
def reparameterised(model: nn.Module, c: float) -> nn.Module:
    """A copy of ``model`` computing the same function with ``W2 / c`` and policy ``c * pi``.

    SVA layers (``W2 diag(pi) W1``) divide ``W2``, IO / output layers (``diag(pi_out) W``)
    divide ``W``; the unbounded linear policy's rows for that part (and their bias) are
    multiplied by ``c``.
    """
    import copy

    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, AdaptiveLinear):
            if m.policy == "sva":
                m.weight_out.div_(c)
            elif m.policy in ("output", "io"):
                m.weight.div_(c)
            else:
                raise ValueError("rescaling needs an SVA, output or IO layer")
            if getattr(m.policy_net, "bounded", True):
                raise ValueError("rescaling needs the unbounded linear policy")
            out = m.policy_net.proj
            part = m.policy_sizes.get("sv") or m.policy_sizes["out"]
            start = m.policy_size - m.policy_sizes.get("bias", 0) - part  # the (sv | out) block
            sl = slice(start, start + part)
            out.weight[sl].mul_(c)
            if out.bias is not None:
                out.bias[sl].mul_(c)
    return twin


def _run_key(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def train_one(variant: str, seed: int, cfg: MNISTBottleneckConfig, data: dict, bar,
              ctx: RunContext) -> dict:
    """Train one (variant, seed) and measure it; resumable, interruptible, torchrun-aware.

    Checkpoints (``ctx.checkpoint_dir/<variant>-seed<s>.pt``) are written after every
    epoch and when a SIGINT/SIGTERM arrives between two steps; they hold the model,
    the optimiser, the data-order generator as it was at the start of the current
    epoch and the position within it, so a resumed run replays exactly the batches
    an uninterrupted one would have seen.  A finished run leaves its result in
    ``<key>.done.pt`` and is not trained again on resume.  Under torchrun every
    rank takes its share of each global batch (:func:`~unbottleneck.training.
    distributed.shard`), and DDP averages the gradients.
    """
    from ..training import (
        TrainingDiverged,
        atomic_torch_save,
        distributed,
        load_checkpoint,
        rng_state,
        set_rng_state,
    )

    dist = ctx.dist
    key = _run_key(variant, seed)
    ckpt_path = ctx.checkpoint_dir / f"{key}.pt"
    done_path = ctx.checkpoint_dir / f"{key}.done.pt"
    if ctx.resume and done_path.is_file():
        result = load_checkpoint(done_path, kind=CHECKPOINT_KIND + "-result", version=CHECKPOINT_FORMAT)
        bar.update(cfg.epochs)
        return result["result"]

    dev = distributed.device_for(cfg.device, dist)
    order = seed_everything(cfg.seed * 1000 + seed)  # the data-order generator
    model = MNISTNet(variant, cfg).to(dev)
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
           else torch.optim.SGD(model.parameters(), lr=cfg.lr))
    curve: list[dict] = []
    epoch, next_batch, running, elapsed = 0, 0, 0.0, 0.0
    epoch_order = order.get_state()
    if ctx.resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, kind=CHECKPOINT_KIND, version=CHECKPOINT_FORMAT)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        epoch_order = state["order"]
        epoch, next_batch, running = state["epoch"], state["batch"], state["running"]
        curve, elapsed = state["curve"], state["elapsed"]
        bar.update(epoch)
    net = distributed.wrap(model, dist)

    def save() -> Path | None:
        if not dist.is_main:
            return ckpt_path
        return atomic_torch_save({
            "kind": CHECKPOINT_KIND, "format": CHECKPOINT_FORMAT, "variant": variant, "seed": seed,
            "epoch": epoch, "batch": next_batch, "running": running, "order": epoch_order,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng_state(),
            "curve": curve, "elapsed": elapsed,
        }, ckpt_path)

    x, y = data["x_train"].to(dev), data["y_train"].to(dev)
    xt, yt = data["x_test"].to(dev), data["y_test"].to(dev)
    starts = range(0, x.shape[0], cfg.batch_size)
    with ctx.interrupt.deferring():
        while epoch < cfg.epochs:
            t0 = time.perf_counter()
            net.train()
            order.set_state(epoch_order)
            perm = torch.randperm(x.shape[0], generator=order).to(dev)
            for b_index in range(next_batch, len(starts)):
                ctx.interrupt.check(save, dist)
                batch = perm[starts[b_index]:starts[b_index] + cfg.batch_size]
                local, _ = distributed.shard(batch, dist)
                # sum / global count, times world size: DDP's gradient average is then the
                # gradient of the global batch's mean loss, exactly as in one process.
                loss_sum = F.cross_entropy(net(x[local]), y[local], reduction="sum")
                loss = loss_sum * (dist.world_size / batch.numel())
                step_total = float(distributed.all_reduce_sum(loss_sum.detach(), dist))
                if not math.isfinite(step_total):
                    raise TrainingDiverged(
                        f"{variant} (seed {seed}): training loss became {step_total} in epoch {epoch + 1}, "
                        f"batch {b_index}; training stopped",
                        ckpt_path if ckpt_path.is_file() else None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += step_total
                next_batch = b_index + 1
            epoch += 1
            curve.append({"epoch": epoch, "train_loss": running / x.shape[0],
                          "test_acc": accuracy(model, xt, yt)})
            elapsed += time.perf_counter() - t0
            epoch_order, next_batch, running = order.get_state(), 0, 0.0
            save()
            bar.update(1)

    pre, eff, layers = measure_effects(model, xt[:cfg.diag_samples], cfg.effect_threshold, seed)
    result = {
        "curve": curve,
        "test_acc": curve[-1]["test_acc"],
        "train_acc": accuracy(model, x, y),
        "params": count_parameters(model),
        "s_per_epoch": elapsed / cfg.epochs,
        "layers": layers,
        "pre": pre,
        "effect": eff,
    }
    if parse_variant(variant)[0] is not None:  # the effect depends on the parameterisation
        result["rescaled"] = {c: spread(rescaled_effect(model, xt[:1000], c, seed))
                              for c in RESCALE_FACTORS}
    if dist.is_main:
        atomic_torch_save({"kind": CHECKPOINT_KIND + "-result", "format": CHECKPOINT_FORMAT,
                           "result": result}, done_path)
    return result


@register(
    "mnist-bottleneck",
    MNISTBottleneckConfig,
    quick={"epochs": 1, "seeds": 1, "n_train": 3000, "diag_samples": 1000,
           "variants": ("sigmoid", "relu", "sva-sigmoid", "sva-none")},
    summary="MNIST MLP (seed or modern regime): sigmoid / ReLU / SVA / IOA accuracy and "
            "activation-effect distributions",
    needs_data=("mnist",),
    resumable=True,
)
def run(cfg: MNISTBottleneckConfig, ctx: RunContext) -> dict:
    cfg = cfg.resolve()
    runs = sweep(cfg, ctx)
    summary = summarize_runs(runs, cfg.effect_threshold)
    ratios = dispersion_ratios(summary)
    write_tables(runs, ctx)
    from .mnist_figures import draw_figures

    figures = draw_figures(runs, cfg, ctx)
    ctx.write_text("report.md", report(cfg, ctx, summary, ratios, figures))
    return {"regime": cfg.regime, "summary": summary, "dispersion_ratio_vs_sigmoid": ratios,
            "dispersion_ratio": ratios.get("sva-sigmoid")}


def sweep(cfg: MNISTBottleneckConfig, ctx: RunContext) -> dict[str, list[dict]]:
    """Train every (variant, seed); returns variant -> per-seed results."""
    from ..data import load_mnist

    x_train, y_train = load_mnist("train", data_dir=ctx.data_dir)
    x_test, y_test = load_mnist("test", data_dir=ctx.data_dir)
    data = {"x_train": x_train[: cfg.n_train], "y_train": y_train[: cfg.n_train],
            "x_test": x_test, "y_test": y_test}
    runs: dict[str, list[dict]] = {v: [] for v in cfg.variants}
    with ctx.bar(len(cfg.variants) * cfg.seeds * cfg.epochs, f"mnist-bottleneck ({cfg.regime})") as bar:
        for v in cfg.variants:
            for s in range(cfg.seeds):
                bar.set_postfix_str(f"{v} seed {s}")
                runs[v].append(train_one(v, s, cfg, data, bar, ctx))
    return runs


def summarize_runs(runs: dict[str, list[dict]], threshold: float) -> dict[str, dict]:
    """Per variant: accuracy, pre-activation and effect statistics as mean ± std over seeds."""
    summary: dict[str, dict] = {}
    for v, rs in runs.items():
        effects = [summarize(r["effect"], threshold) for r in rs]
        pres = [summarize(r["pre"], threshold) for r in rs]
        summary[v] = {
            "test_acc": mean_std(r["test_acc"] for r in rs),
            "train_acc": mean_std(r["train_acc"] for r in rs),
            "params": rs[0]["params"],
            "s_per_epoch": mean_std(r["s_per_epoch"] for r in rs),
            "pre_std": mean_std(p["std"] for p in pres),
            "pre_mean": mean_std(p["mean"] for p in pres),
            **{f"effect_{k}": mean_std(e[k] for e in effects)
               for k in ("std", "iqr", "mad", "mean_abs", "share_beyond")},
            "effect_kind": "activation" if parse_variant(v)[0] is None else "adaptation",
            "seed_claim_acc": SEED_ACCURACY.get(v),
        }
        if "rescaled" in rs[0]:
            summary[v]["rescaled_effect"] = {
                str(c): {k: mean_std(r["rescaled"][c][k] for r in rs) for k in DISPERSION_STATS}
                for c in rs[0]["rescaled"]}
    return summary


DISPERSION_STATS = ("std", "iqr", "mad")


def dispersion_ratios(summary: dict[str, dict]) -> dict[str, dict[str, float]]:
    """variant -> {std, iqr, mad}: its effect's spread over the static sigmoid net's (means over seeds)."""
    base = summary.get("sigmoid")
    if base is None:
        return {}
    return {v: {k: s[f"effect_{k}"]["mean"] / base[f"effect_{k}"]["mean"] for k in DISPERSION_STATS}
            for v, s in summary.items() if v != "sigmoid"}


def write_tables(runs: dict[str, list[dict]], ctx: RunContext) -> None:
    ctx.write_csv("curves.csv", [{"variant": v, "seed": s, **c}
                                 for v, rs in runs.items() for s, r in enumerate(rs) for c in r["curve"]])
    ctx.write_csv("layers.csv", [
        {"variant": v, "seed": s, "layer": name, "kind": L["kind"], "activation": L["activation"],
         "pre_std": L["preactivation"]["std"], "pre_mean": L["preactivation"]["mean"],
         "effect_std": L["effect"]["std"], "effect_iqr": L["effect"]["iqr"], "effect_mad": L["effect"]["mad"],
         "effect_mean_abs": L["effect"]["mean_abs"], "effect_share_beyond": L["effect"]["share_beyond"]}
        for v, rs in runs.items() for s, r in enumerate(rs) for name, L in r["layers"].items()
    ])


def _ratio_text(r: dict[str, float] | None) -> str:
    return "1x" if r is None else " / ".join(f"{r[k]:.3g}x" for k in DISPERSION_STATS)


def report(cfg: MNISTBottleneckConfig, ctx: RunContext, summary: dict, ratios: dict,
           figures: list[tuple[str, str]]) -> str:
    table = [[v, s["params"], fmt(s["test_acc"], 4),
              "n/a" if s["seed_claim_acc"] is None else f"{s['seed_claim_acc']:.0%}",
              fmt(s["pre_std"], 3), s["effect_kind"], fmt(s["effect_std"], 4), fmt(s["effect_iqr"], 4),
              fmt(s["effect_mad"], 4), fmt(s["effect_share_beyond"], 3), _ratio_text(ratios.get(v)),
              fmt(s["s_per_epoch"], 2)] for v, s in summary.items()]
    opt = "Adam" if cfg.optimizer == "adam" else "plain SGD"
    lines = [
        f"# mnist-bottleneck ({cfg.regime} regime): the activation function bottleneck on MNIST", "",
        f"Command: `{ctx.command}`" if ctx.command else "", "",
        f"Regime **{cfg.regime}**: MLP 784 -> {' -> '.join(map(str, cfg.hidden))} -> 10; static layers "
        f"`nn.Linear` (starter truncated-normal init), adaptive layers `AdaptiveLinear` ({cfg.policy_net} "
        f"policy, {'pi = P x without bias' if not cfg.policy_bias else 'pi = P x + 1'} unless the variant "
        f"pins it: `sva0` bias-free, `sva1` starting at 1; {cfg.adaptive_init} init of W).  {opt} lr "
        f"{cfg.lr}, batch {cfg.batch_size}, {plural(cfg.epochs, 'epoch')} on {cfg.n_train} training images, "
        f"{plural(cfg.seeds, 'seed')}; test accuracy on 10,000 test images (mean ± std over seeds).  Diagnostics "
        f"on {cfg.diag_samples} test images, hidden layers pooled: *activation* effect "
        "phi(a) - (phi'(0) a + phi(0)) for static layers, *adaptation* effect (layer output minus the "
        "same layer with policies fixed to 1 and phi linearised) for adaptive ones.  Spread of the "
        "effect in three statistics: std, interquartile range (IQR) and median absolute deviation "
        f"(MAD); 'share > {cfg.effect_threshold}' is the fraction of |effect| beyond that threshold; "
        "the ratio columns divide each statistic by the static sigmoid net's (std / IQR / MAD).",
        "",
        markdown_table(["variant", "params", "test acc", "seed claim", "pre-act std", "effect",
                        "effect std", "effect IQR", "effect MAD", f"share > {cfg.effect_threshold}",
                        "ratio vs sigmoid (std / IQR / MAD)", "s/epoch"], table),
        "",
    ]
    if "sva-sigmoid" in ratios:
        lines += [f"SVA + sigmoid over static sigmoid, effect dispersion: std "
                  f"**{ratios['sva-sigmoid']['std']:.3g}x**, IQR **{ratios['sva-sigmoid']['iqr']:.3g}x**, "
                  f"MAD **{ratios['sva-sigmoid']['mad']:.3g}x** (the seed reports almost two orders of "
                  "magnitude, without naming the statistic).  Where the sigmoid's pre-activations are "
                  "narrow its effect is close to `-a^3/48` of a near-Gaussian: sharply peaked with "
                  "heavy tails, so its std is several times its IQR, and the ratio depends on the "
                  "statistic.", ""]
    rescaled = {v: s["rescaled_effect"] for v, s in summary.items() if "rescaled_effect" in s}
    if rescaled:
        rows = [[v, c, *(fmt(r[c][k], 4) for k in DISPERSION_STATS)] for v, r in rescaled.items() for c in r]
        lines += ["**The adaptation effect depends on the parameterisation.**  Writing the same trained "
                  "network with `W2 / c` and the policy scaled by `c` (an exact re-parameterisation: "
                  "every output is unchanged) changes the measured effect, because the reference "
                  "'policy fixed to 1' moves with it:", "",
                  markdown_table(["variant", "c", "effect std", "effect IQR", "effect MAD"], rows), ""]
    lines += [f"![{alt}]({name})\n" for alt, name in figures]
    return "\n".join(lines)
