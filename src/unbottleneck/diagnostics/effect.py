"""The activation effect: how far an activation is from its linearisation on the data.

For a pre-activation ``a`` and an element-wise activation ``phi`` the seed measures

    effect(a) = phi(a) - (phi'(0) a + phi(0)),

the part of ``phi(a)`` that a first-order expansion around 0 (where
pre-activations cluster) does not explain.  A distribution of effects sharply
peaked at 0 means the network is nearly linear on its data: the activation
function bottleneck.

``phi'(0)`` is taken from autograd, never from a table, so any activation
(including user modules) works.  Activations with a kink at 0 (ReLU, leaky
ReLU, hard-tanh variants) have no derivative there; autograd returns one of
the one-sided values (0 for ReLU), which would count half of ReLU's linear part
as "effect".  By default (``kink="mean"``) a kink is detected by comparing the
autograd slopes just left and right of 0 and the mean of the two one-sided
slopes is used (ReLU: 0.5, so ``effect = |a| / 2``); ``kink="autograd"`` keeps
autograd's value at 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .._validate import choice

Activation = Callable[[torch.Tensor], torch.Tensor]

KINK_MODES = ("mean", "autograd")
#: quantiles reported by :func:`summarize`
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass(frozen=True)
class Linearization:
    """``phi(a) ~ slope * a + intercept`` around 0; ``kink`` if phi has no derivative at 0."""

    slope: float
    intercept: float
    kink: bool

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return self.slope * a + self.intercept


def _check_elementwise(x: torch.Tensor, y: object) -> None:
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        raise ValueError("the activation must be element-wise: it changed the shape of its input")


def _slope_at(phi: Activation, value: float) -> float:
    # Callers (forward hooks, eval loops) often run under no_grad or inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.tensor([value], dtype=torch.float64, requires_grad=True)
        y = phi(x.clone())  # a non-leaf copy, so in-place activations (inplace=True) work too
        _check_elementwise(x, y)
        if not y.requires_grad:
            # e.g. a step function built from comparisons: its derivative is zero wherever it exists
            return 0.0
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return 0.0 if g is None else float(g)


def linearize(phi: Activation, kink: str = "mean", h: float = 1e-6, tol: float = 1e-3) -> Linearization:
    """First-order expansion of an element-wise activation at 0, slope from autograd.

    Args:
        phi: a function or module mapping a tensor element-wise (evaluated in float64).
        kink: ``"mean"`` (default) uses the mean of the one-sided slopes at ``±h`` when they
            differ by more than ``tol`` (a kink at 0), ``"autograd"`` always uses autograd's
            value at exactly 0.
        h, tol: offset of the one-sided probes and the kink threshold.

    Returns:
        :class:`Linearization` with ``slope``, ``intercept = phi(0)`` and ``kink``.
    """
    choice("kink mode", kink, KINK_MODES)
    with torch.no_grad():
        zero = torch.zeros(1, dtype=torch.float64)
        phi0 = phi(zero.clone())
        _check_elementwise(zero, phi0)
        intercept = float(phi0)
    at_zero = _slope_at(phi, 0.0)
    left, right = _slope_at(phi, -h), _slope_at(phi, h)
    has_kink = abs(right - left) > tol
    slope = 0.5 * (left + right) if has_kink and kink == "mean" else at_zero
    return Linearization(slope=slope, intercept=intercept, kink=has_kink)


def activation_effect(
    phi: Activation, a: torch.Tensor, linearization: Linearization | None = None
) -> torch.Tensor:
    """``phi(a) - (phi'(0) a + phi(0))`` element-wise, same shape as ``a``."""
    if not isinstance(a, torch.Tensor) or not a.is_floating_point():
        raise TypeError("activation_effect expects a floating point tensor of pre-activations")
    lin = linearize(phi) if linearization is None else linearization
    with torch.no_grad():
        return phi(a) - lin(a)


def summarize(values: torch.Tensor, threshold: float = 0.05,
              quantiles: Iterable[float] = QUANTILES) -> dict[str, float]:
    """Summary statistics of a sample (any shape; flattened).

    Returns mean, std, mean absolute value, the quantiles, ``share_beyond``: the
    fraction of values with ``|v| > threshold`` (the seed's "few values outside 0.05"),
    and two robust measures of spread: ``iqr`` (75th minus 25th percentile) and ``mad``
    (median absolute deviation from the median, unscaled).  A sharply peaked sample with
    heavy tails (a static activation effect) has a std several times its IQR, so a
    dispersion claim must say which of the three it compares.
    """
    v = values.detach().reshape(-1).to(torch.float64)
    if v.numel() == 0:
        raise ValueError("cannot summarise an empty sample")
    if not torch.isfinite(v).all():
        raise ValueError("the sample contains NaN or inf values")
    q = torch.tensor(list(quantiles), dtype=torch.float64)
    qv = torch.quantile(v[:16_000_000], q)  # torch.quantile's input size limit
    out = {
        "n": int(v.numel()),
        "mean": float(v.mean()),
        "std": float(v.std(unbiased=False)),
        "mean_abs": float(v.abs().mean()),
        "share_beyond": float((v.abs() > threshold).to(torch.float64).mean()),
        "threshold": float(threshold),
    }
    out.update({f"q{100 * p:g}": float(x) for p, x in zip(q.tolist(), qv.tolist(), strict=True)})
    out.update(spread(v))
    return out


def spread(values: torch.Tensor) -> dict[str, float]:
    """``{"std", "iqr", "mad"}`` of a sample (flattened, float64; std with 1/n).

    ``iqr`` uses linear interpolation between order statistics (``torch.quantile``'s
    default); ``mad`` is ``median(|v - median(v)|)`` with the lower median for an
    even count (``torch.median``), without the 1.4826 normal-consistency factor.
    """
    v = values.detach().reshape(-1).to(torch.float64)[:16_000_000]
    q1, q3 = torch.quantile(v, torch.tensor([0.25, 0.75], dtype=torch.float64)).tolist()
    med = v.median()
    return {"std": float(v.std(unbiased=False)), "iqr": q3 - q1, "mad": float((v - med).abs().median())}
