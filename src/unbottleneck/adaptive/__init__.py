"""Adaptive parameterization: layers whose weights adapt to the input (arXiv 1805.08574)."""

from .alstm import ALSTM, ALSTMCell, ALSTMCellState, ALSTMMasks, ALSTMState
from .linear import INITS, POLICIES, AdaptiveLinear
from .policy import POLICY_NETS, LinearPolicy, MLPPolicy, build_policy

__all__ = [
    "ALSTM", "ALSTMCell", "ALSTMCellState", "ALSTMMasks", "ALSTMState",
    "INITS", "POLICIES", "POLICY_NETS", "AdaptiveLinear", "LinearPolicy", "MLPPolicy", "build_policy",
]
