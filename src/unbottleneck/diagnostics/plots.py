"""Histogram plots of pre-activation and effect distributions (matplotlib, headless-safe)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def plot_histograms(
    samples: Mapping[str, torch.Tensor],
    ax: Any = None,
    bins: int = 100,
    range: tuple[float, float] | None = None,  # noqa: A002 - mirrors matplotlib's argument
    log: bool = False,
    title: str = "",
    xlabel: str = "",
) -> Any:
    """Overlay density histograms of several samples on one axis; returns the axis.

    Args:
        samples: label -> 1-D tensor (any shape is flattened).
        ax: a matplotlib axis (a new figure is made if None).
        bins, range: histogram bins; ``range`` defaults to the pooled 0.5%-99.5% quantiles
            so one outlier does not squash the plot.
        log: logarithmic density axis (shows the tails).
    """
    import matplotlib.pyplot as plt

    if not samples:
        raise ValueError("plot_histograms needs at least one sample")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    flat = {k: v.detach().reshape(-1).to("cpu", torch.float64) for k, v in samples.items()}
    if range is None:
        pooled = torch.cat(list(flat.values()))
        pooled = pooled[: 4_000_000]
        lo, hi = torch.quantile(pooled, torch.tensor([0.005, 0.995], dtype=torch.float64)).tolist()
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        range = (lo, hi)
    for label, v in flat.items():
        ax.hist(v.numpy(), bins=bins, range=range, density=True, histtype="stepfilled", alpha=0.35,
                label=f"{label} (std {float(v.std(unbiased=False)):.3g})", log=log)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    return ax
