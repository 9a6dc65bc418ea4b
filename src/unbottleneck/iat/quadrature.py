"""Quadrature rules on [-1, 1].

Every rule returns nodes ``s`` (M,) and weights ``w`` (M,) in float64 so that
``sum_k w_k g(s_k)`` approximates ``integral_{-1}^{1} g(s) ds``.  They are built
once in float64 (the weights of Gauss-Legendre lose digits otherwise) and cast
to the module's dtype when stored as buffers.
"""

from __future__ import annotations

import numpy as np
import torch

QUADRATURES = ("midpoint", "trapezoid", "gauss_legendre")
_ALIASES = {"gauss-legendre": "gauss_legendre", "gauss": "gauss_legendre", "legendre": "gauss_legendre"}


def canonical_quadrature(name: str) -> str:
    """Normalise a quadrature name, raising a clear error for unknown ones."""
    if not isinstance(name, str):
        raise TypeError(f"quadrature must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in QUADRATURES:
        raise ValueError(f"unknown quadrature {name!r}; choose one of {', '.join(QUADRATURES)}")
    return key


def quadrature_rule(name: str, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights of an ``num_points``-point rule on [-1, 1].

    Returns:
        (s, w): two float64 tensors of shape (M,).
    """
    name = canonical_quadrature(name)
    if not isinstance(num_points, int) or isinstance(num_points, bool):
        raise TypeError(f"num_points must be an int, got {type(num_points).__name__}")
    if num_points < 1:
        raise ValueError(f"num_points (M) must be >= 1, got {num_points}")
    m = num_points
    if name == "midpoint":
        h = 2.0 / m
        s = -1.0 + h * (np.arange(m, dtype=np.float64) + 0.5)
        w = np.full(m, h)
    elif name == "trapezoid":
        if m < 2:
            raise ValueError("the trapezoid rule needs num_points >= 2 (both end points)")
        s = np.linspace(-1.0, 1.0, m)
        h = 2.0 / (m - 1)
        w = np.full(m, h)
        w[0] = w[-1] = h / 2
    else:  # gauss_legendre
        s, w = np.polynomial.legendre.leggauss(m)
    return torch.from_numpy(np.ascontiguousarray(s)), torch.from_numpy(np.ascontiguousarray(w))
