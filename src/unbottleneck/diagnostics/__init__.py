"""Measure the activation function bottleneck on any model.

* :func:`linearize` / :func:`activation_effect`: ``phi(a) - (phi'(0) a + phi(0))`` with
  ``phi'(0)`` from autograd.
* :class:`BottleneckRecorder`: forward hooks recording pre-activations and activation
  effects of standard activation modules, and the adaptation effect of adaptive layers.
* :func:`summarize`: std, quantiles and the share of values beyond a threshold.
* :func:`plot_histograms`: overlaid distributions.
"""

from .effect import KINK_MODES, QUANTILES, Linearization, activation_effect, linearize, summarize
from .plots import plot_histograms
from .recorder import DEFAULT_ACTIVATIONS, BottleneckRecorder, LayerRecord

__all__ = [
    "DEFAULT_ACTIVATIONS",
    "KINK_MODES",
    "QUANTILES",
    "BottleneckRecorder",
    "LayerRecord",
    "Linearization",
    "activation_effect",
    "linearize",
    "plot_histograms",
    "summarize",
]
