"""Benchmarks behind ``unbottleneck bench``: speed and memory as ratios to baselines.

Every benchmark is a module of this package with one function::

    run(quick: bool = False, repeats: int = 5, progress: bool = True) -> dict

returning ``{"name": str, "rows": [row, ...], "notes": [str, ...]}``, each row a
dict with at least

=================  ===========================================================
``case``           what is measured (sizes, options)
``metric``         e.g. ``"fwd+bwd time"``, ``"peak memory"``
``value``          the candidate's median (``unit`` says ms, MiB, steps, ...)
``spread``         ``[min, max]`` over the repeats (or a number: +-), or None
``baseline``       what it is compared with, measured in the same process run
``baseline_value`` the baseline's median
``ratio``          value / baseline_value (median of per-repeat ratios when
                   interleaved), or None when the baseline has no value
=================  ===========================================================

and optionally ``unit``, ``baseline_spread``, ``ratio_spread``, ``target``
(e.g. ``"<= 0.5"``) with ``meets`` (bool), and any extra fields.  ``--quick``
runs tiny sizes with at most two repeats (a smoke test of a few seconds).
Timing and memory helpers shared by all modules live in :mod:`.measure`; the
runner writing JSON and Markdown is :mod:`.runner`.
"""

from __future__ import annotations

# name -> module path; a module that does not exist (yet) is reported as skipped.
BENCHMARKS: dict[str, str] = {
    "iat": "unbottleneck.bench.iat",
    "adaptive_linear": "unbottleneck.bench.adaptive_linear",
    "gdnn": "unbottleneck.bench.gdnn",
    "alstm": "unbottleneck.bench.alstm",
}

from .runner import format_markdown, run_benchmarks  # noqa: E402

__all__ = ["BENCHMARKS", "format_markdown", "run_benchmarks"]
