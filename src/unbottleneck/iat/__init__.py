"""Integral Activation Transform (IAT): modules, functional forms, bases and analysis."""

from .analysis import (
    activation_matrix,
    activation_pattern,
    iat_gain,
    pattern_along_path,
    pattern_events,
    pattern_jump,
    pattern_sensitivity,
)
from .basis import BASES, basis_properties, evaluate_basis
from .functional import NONLINEARITIES, build_structure, iat_fast, iat_reference
from .gdnn import GDNN
from .module import IAT, IATReLU, discretize
from .quadrature import QUADRATURES, quadrature_rule

__all__ = [
    "BASES",
    "GDNN",
    "IAT",
    "IATReLU",
    "NONLINEARITIES",
    "QUADRATURES",
    "activation_matrix",
    "activation_pattern",
    "basis_properties",
    "build_structure",
    "discretize",
    "evaluate_basis",
    "iat_fast",
    "iat_gain",
    "iat_reference",
    "pattern_along_path",
    "pattern_events",
    "pattern_jump",
    "pattern_sensitivity",
    "quadrature_rule",
]
