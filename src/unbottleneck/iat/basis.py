"""Basis families for the Integral Activation Transform.

A basis family maps quadrature nodes ``s`` (M,) in [-1, 1] and a count ``n`` to
the matrix ``B[k, i] = b_i(s_k)`` of shape (M, n).  The families are evaluated in
float64; the module casts the result to its own dtype.

Families (``BASES``):

``rectangular``
    Indicators of ``n`` equal cells of [-1, 1] (half-open, the last one closed).
    Discontinuous: used with the midpoint rule it turns IAT-ReLU into ReLU.
``piecewise_linear``
    Hat functions centred on ``n`` uniform nodes ``-1 .. 1`` (a partition of
    unity).  Continuous and local, so ``P`` is banded.  ``n == 1`` gives the
    constant function (no hat can be formed from one node).
``fourier``
    ``sin(pi s), cos(pi s), sin(2 pi s), cos(2 pi s), ...``: continuous, global,
    zero integral, orthonormal on [-1, 1] and of large total variation.

Any callable ``fn(s: Tensor[M]) -> Tensor[M, n]`` is accepted as a custom family.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

BasisFn = Callable[[torch.Tensor], torch.Tensor]
BasisSpec = str | BasisFn

BASES = ("rectangular", "piecewise_linear", "fourier")
_ALIASES = {
    "rect": "rectangular",
    "indicator": "rectangular",
    "piecewise-linear": "piecewise_linear",
    "hat": "piecewise_linear",
    "linear": "piecewise_linear",
    "sine": "fourier",
    "trig": "fourier",
}


def canonical_basis(basis: BasisSpec) -> BasisSpec:
    """Return the canonical name of a basis family (callables pass through)."""
    if callable(basis):
        return basis
    if not isinstance(basis, str):
        raise TypeError(f"basis must be a name or a callable, got {type(basis).__name__}")
    key = _ALIASES.get(basis.lower(), basis.lower())
    if key not in BASES:
        raise ValueError(
            f"unknown basis {basis!r}; choose one of {', '.join(BASES)} or pass a callable "
            "fn(s) -> Tensor[len(s), n]"
        )
    return key


def rectangular(s: torch.Tensor, n: int) -> torch.Tensor:
    """Indicators of the cells [-1 + 2i/n, -1 + 2(i+1)/n), shape (M, n)."""
    pos = (s.to(torch.float64) + 1.0) * (n / 2.0)
    # Nodes that sit on a cell boundary (trapezoid rule) must not fall into the
    # left cell through round-off, hence the small tolerance before floor.
    cell = torch.floor(pos + 1e-9).long().clamp_(0, n - 1)
    return torch.nn.functional.one_hot(cell, n).to(torch.float64)


def piecewise_linear(s: torch.Tensor, n: int) -> torch.Tensor:
    """Hat functions on ``n`` uniform nodes of [-1, 1], shape (M, n)."""
    s = s.to(torch.float64)
    if n == 1:
        return torch.ones(s.shape[0], 1, dtype=torch.float64)
    centres = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    h = 2.0 / (n - 1)
    return (1.0 - (s[:, None] - centres[None, :]).abs() / h).clamp_(min=0.0)


def fourier(s: torch.Tensor, n: int) -> torch.Tensor:
    """sin(k pi s), cos(k pi s) for k = 1, 2, ... (orthonormal on [-1, 1]), shape (M, n)."""
    s = s.to(torch.float64)
    j = torch.arange(n, dtype=torch.float64)
    k = torch.floor(j / 2) + 1
    arg = math.pi * s[:, None] * k[None, :]
    is_sin = (torch.arange(n) % 2 == 0)[None, :]
    return torch.where(is_sin, torch.sin(arg), torch.cos(arg))


class ShiftedFourier:
    """Fourier basis with every frequency raised by ``offset``: sin((k + offset) pi s),
    cos((k + offset) pi s), k = 1, 2, ...  Same zero integral and orthonormality, larger
    total variation (4 (k + offset) per function).  A callable ``fn(s) -> (len(s), n)``."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n, self.offset = int(n), int(offset)
        self.__name__ = f"fourier+{self.offset}"

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        s = s.to(torch.float64)
        j = torch.arange(self.n, dtype=torch.float64)
        arg = math.pi * s[:, None] * (torch.floor(j / 2) + 1 + self.offset)[None, :]
        return torch.where((torch.arange(self.n) % 2 == 0)[None, :], torch.sin(arg), torch.cos(arg))

    def __repr__(self) -> str:
        return f"ShiftedFourier(n={self.n}, offset={self.offset})"


class WideHats:
    """Hat functions on ``n`` uniform centres of [-1, 1] whose half-width is ``support``
    node spacings (1 = the ``piecewise_linear`` family).  Wider hats have a smaller total
    variation per unit L2 norm.  A callable ``fn(s) -> (len(s), n)``."""

    def __init__(self, n: int, support: float = 1.0) -> None:
        if n < 2 or support <= 0:
            raise ValueError("WideHats needs n >= 2 and support > 0")
        self.n, self.support = int(n), float(support)
        self.__name__ = f"hats x{self.support:g}"

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        s = s.to(torch.float64)
        centres = torch.linspace(-1.0, 1.0, self.n, dtype=torch.float64)
        half = self.support * 2.0 / (self.n - 1)
        return (1.0 - (s[:, None] - centres[None, :]).abs() / half).clamp_(min=0.0)

    def __repr__(self) -> str:
        return f"WideHats(n={self.n}, support={self.support:g})"


_FAMILIES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "rectangular": rectangular,
    "piecewise_linear": piecewise_linear,
    "fourier": fourier,
}


def evaluate_basis(basis: BasisSpec, s: torch.Tensor, n: int) -> torch.Tensor:
    """Evaluate ``n`` functions of a family at nodes ``s`` (M,) -> float64 (M, n)."""
    basis = canonical_basis(basis)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of basis functions must be a positive int, got {n!r}")
    s = s.to(torch.float64)
    if isinstance(basis, str):
        return _FAMILIES[basis](s, n)
    out = torch.as_tensor(basis(s), dtype=torch.float64)
    if out.shape != (s.shape[0], n):
        raise ValueError(
            f"custom basis returned shape {tuple(out.shape)}, expected (len(s), n) = ({s.shape[0]}, {n})"
        )
    if not torch.isfinite(out).all():
        raise ValueError("custom basis returned non-finite values")
    return out


def basis_name(basis: BasisSpec) -> str:
    """Printable name of a basis (function name for callables)."""
    basis = canonical_basis(basis)
    return basis if isinstance(basis, str) else getattr(basis, "__name__", type(basis).__name__)


def basis_properties(
    basis: BasisSpec, n: int, zero_mean: bool = False, resolution: int = 20001
) -> dict[str, torch.Tensor]:
    """Integral and total variation of each basis function on [-1, 1].

    Both are measured on a fine uniform grid of ``resolution`` points (the
    integral with the trapezoid rule, the total variation as the sum of absolute
    increments, which is exact for piecewise-monotone functions once the grid
    resolves their extrema).  The seed recommends zero integral (the state
    function always has roots) and large total variation (roots move when any
    coordinate moves).

    Returns:
        dict with float64 tensors ``integral`` (n,), ``total_variation`` (n,) and ``l2_norm``
        (n,); ``total_variation / l2_norm`` is the scale-free measure (a rescaled basis is
        absorbed by the neighbouring linear layers).
    """
    s = torch.linspace(-1.0, 1.0, resolution, dtype=torch.float64)
    values = evaluate_basis(basis, s, n)
    h = 2.0 / (resolution - 1)
    integral = h * (values.sum(0) - 0.5 * (values[0] + values[-1]))
    if zero_mean:
        values = values - integral / 2.0
        integral = torch.zeros_like(integral)
    tv = values.diff(dim=0).abs().sum(0)
    l2 = (h * ((values * values).sum(0) - 0.5 * (values[0] ** 2 + values[-1] ** 2))).clamp(min=0).sqrt()
    return {"integral": integral, "total_variation": tv, "l2_norm": l2}
