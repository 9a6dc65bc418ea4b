"""Pieces shared by the experiments: model builders, seeding, statistics, Markdown."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..iat import IAT

ACTIVATIONS = ("relu", "iat-rectangular", "iat-piecewise_linear", "iat-fourier")


def plural(n: int, word: str) -> str:
    """``"1 seed"``, ``"3 seeds"``: counts in reports read as English."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def require_positive(cfg: Any, *keys: str) -> None:
    """Config validation: raise ``ValueError("<key> must be >= 1")`` for the first field
    of ``keys`` below 1."""
    for key in keys:
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1")


def require_lr(cfg: Any, key: str = "lr") -> None:
    """Config validation: the learning rate must be a finite number > 0 (0 trains nothing)."""
    value = getattr(cfg, key)
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{key} must be a finite number > 0, got {value}")


def require_nonempty(cfg: Any, *keys: str) -> None:
    """Config validation: each list field of ``keys`` must name at least one entry."""
    for key in keys:
        if not getattr(cfg, key):
            raise ValueError(f"{key} must name at least one entry (got an empty list)")


def require_presets(cfg: Any) -> None:
    """Config validation of a ``models`` list of language-model presets: non-empty, each
    known and valid at the config's size (``tiny``) and ``device``."""
    from ..lm import PRESETS, get_preset

    if not cfg.models:
        raise ValueError("models must name at least one preset")
    for m in cfg.models:
        if m not in PRESETS:
            raise ValueError(f"unknown preset {m!r} in models; valid presets: {', '.join(PRESETS)}")
        get_preset(m, quick=cfg.tiny, device=cfg.device)  # surfaces config errors early


def parse_activation(name: str) -> tuple[str, dict[str, Any]]:
    """``"relu"`` or ``"iat-<basis>[+zm]"`` -> (basis or "relu", IAT options).

    The ``+zm`` suffix selects zero-mean basis functions (``zero_mean=True``).
    """
    if name == "relu":
        return "relu", {}
    if not name.startswith("iat-"):
        raise ValueError(
            f"unknown activation {name!r}; use 'relu' or 'iat-<basis>[+zm]' "
            f"(e.g. {', '.join(ACTIVATIONS)}, iat-piecewise_linear+zm)"
        )
    from ..iat.basis import canonical_basis

    basis, _, suffix = name[4:].partition("+")
    if suffix not in ("", "zm"):
        raise ValueError(f"unknown activation suffix {'+' + suffix!r} in {name!r}; only '+zm' exists")
    canonical_basis(basis)
    return basis, {"zero_mean": suffix == "zm"}


def check_activation(name: str) -> None:
    """Raise a clear ValueError for an activation name the experiments do not know."""
    parse_activation(name)


def require_discretisable(activations: Iterable[str], widths: Iterable[int], factors: Iterable[int]) -> None:
    """Build each IAT activation once at every (width, M = factor x width) so that a size the
    library refuses (a basis function zero at every node) fails at config time, not mid-run.

    Factors >= 2 are not built (that would cost O(M d) memory for a check that cannot fail):
    with M >= 2d nodes of any of the three rules every cell, hat and cosine of the named
    families holds a node whose value is far from zero (width 1 is built: zero_mean empties it).
    """
    for name in activations:
        basis, options = parse_activation(name)
        if basis == "relu":
            continue
        for width in widths:
            for factor in (f for f in factors if f < 2 or width < 2):
                try:
                    IAT(width, basis=basis, num_points=factor * width, **options)
                except ValueError as exc:
                    raise ValueError(f"{name} at width {width}, M = {factor} x width: {exc}") from None


def make_activation(name: str, width: int, points_factor: int = 4, **iat_kwargs: Any) -> nn.Module:
    """``"relu"`` -> nn.ReLU; ``"iat-<basis>[+zm]"`` -> IATReLU with M = points_factor * width."""
    basis, options = parse_activation(name)
    if basis == "relu":
        return nn.ReLU()
    return IAT(width, basis=basis, num_points=points_factor * width, **options, **iat_kwargs)


def make_mlp(
    in_features: int,
    width: int,
    out_features: int,
    depth: int,
    activation: str | Callable[[int], nn.Module],
    points_factor: int = 4,
    **iat_kwargs: Any,
) -> nn.Sequential:
    """``depth`` hidden layers of size ``width``; the same parameters for every activation.

    ``activation``: a name (see :func:`make_activation`) or a factory ``width -> module``.

    Linear layers use He-style init with the activation's own gain (sqrt(2) for ReLU,
    :func:`~unbottleneck.iat.iat_gain` for IATs), so all variants start from the same
    scale and differ only in the activation.
    """
    from ..iat import iat_gain

    layers: list[nn.Module] = []
    gain = 1.0
    for i in range(depth):
        lin = nn.Linear(in_features if i == 0 else width, width)
        with torch.no_grad():
            lin.weight.normal_(0.0, gain / math.sqrt(lin.in_features))
            lin.bias.zero_()
        act = (activation(width) if callable(activation)
               else make_activation(activation, width, points_factor, **iat_kwargs))
        gain = math.sqrt(2.0) if isinstance(act, nn.ReLU) else iat_gain(act)
        layers += [lin, act]
    head = nn.Linear(width, out_features)
    with torch.no_grad():
        head.weight.normal_(0.0, gain / math.sqrt(width))
        head.bias.zero_()
    layers.append(head)
    return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Classification accuracy of ``model`` on ``(x, y)`` in eval mode, in batches; the
    model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum())
                  for i in range(0, x.shape[0], batch))
    model.train(was_training)
    return correct / x.shape[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max (std 0 for a single value).

    NaN entries (a metric that does not apply, a run that never reached a level)
    are left out; ``n`` counts the values used.
    """
    vals = [float(v) for v in values if not math.isnan(float(v))]
    if not vals:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def fmt(stats: dict[str, float], digits: int = 4, scientific: bool = False) -> str:
    """``mean ± std`` for Markdown tables."""
    f = f"{{:.{digits}e}}" if scientific else f"{{:.{digits}f}}"
    if stats.get("n", 1) == 0:
        return "n/a"
    if stats.get("n", 1) > 1:
        return f"{f.format(stats['mean'])} ± {f.format(stats['std'])}"
    return f.format(stats["mean"])


def table_cell(text: object) -> str:
    """Text that stays inside one markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def total_variation(y: torch.Tensor) -> float:
    """Total variation of samples on a 1-D grid."""
    return float(y.diff().abs().sum())


def roughness(y: torch.Tensor, h: float) -> float:
    """Root-mean-square second derivative on a uniform 1-D grid of step ``h``."""
    d2 = (y[2:] - 2 * y[1:-1] + y[:-2]) / (h * h)
    return float(d2.pow(2).mean().sqrt())
