"""The transformer's feed-forward variants: registry, cost accounting and width matching.

``FFN_VARIANTS`` maps a name to its module class (each in its own file):
``mlp`` (Linear-GELU-Linear, or ReLU with ``activation="relu"``), ``swiglu`` (gated SiLU), ``iat`` (Linear-IAT-Linear),
``adaptive`` (AdaptiveLinear-GELU-Linear).  :func:`matched_width` picks each variant's
hidden width so that its block has the same parameter count as the ``mlp`` block of a
reference width (``match="params"``) or the same multiply-adds per token
(``match="flops"``).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from ..adaptive import AdaptiveLinear
from ..iat import IAT
from .ffn_adaptive import AdaptiveFFN
from .ffn_iat import IATFFN
from .ffn_mlp import MLPFFN
from .ffn_swiglu import SwiGLUFFN

FFN_VARIANTS: dict[str, type[nn.Module]] = {
    "mlp": MLPFFN, "swiglu": SwiGLUFFN, "iat": IATFFN, "adaptive": AdaptiveFFN,
}
MATCH_MODES = ("params", "flops", "none")


def build_ffn(variant: str, d_model: int, d_ff: int, device=None, dtype=None, **options: Any) -> nn.Module:
    if variant not in FFN_VARIANTS:
        raise ValueError(f"unknown ffn {variant!r}; choose one of {', '.join(FFN_VARIANTS)}")
    if variant == "swiglu" and options:
        raise ValueError(f"ffn='swiglu' takes no options, got {', '.join(sorted(options))}")
    if variant == "mlp" and set(options) - {"activation"}:
        raise ValueError(f"ffn='mlp' takes only activation=, got {', '.join(sorted(options))}")
    return FFN_VARIANTS[variant](d_model, d_ff, device=device, dtype=dtype, **options)


def iat_multiply_adds(iat: IAT) -> int:
    """Multiply-adds per token of an IAT as its structured kernel computes it.

    ``select`` (rectangular): one scale per feature; ``band`` (hats): two per node for the
    state and two for the output sums, plus ~3 d for the dual's tridiagonal solve; Fourier
    by FFT: two real FFTs of length M (~2.5 M log2 M each); the generic path: the non-zeros
    of ``P`` and ``Qw``.  Element-wise nonlinearities are not counted (nor for the GELU).
    """
    d, M = iat.in_features, iat.num_points
    kernel = iat.kernel if iat._ops is not None else "generic"
    if kernel == "select":
        return d
    if kernel == "band":
        return 4 * M + (3 * d if iat.q_mode == "dual" else 0)
    if kernel == "fourier":
        return int(5 * M * math.log2(M)) + d
    return int((iat.P != 0).sum()) + int((iat.Qw != 0).sum())


def multiply_adds(module: nn.Module) -> int:
    """Forward multiply-adds per token of an FFN (or any stack of these layers)."""
    total = 0
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features
        elif isinstance(mod, AdaptiveLinear):
            # every matrix of the layer and of its policy is applied once per token,
            # plus the element-wise scaling by the policy outputs
            total += sum(p.numel() for p in mod.parameters() if p.dim() == 2) + mod.policy_size
        elif isinstance(mod, IAT):
            total += iat_multiply_adds(mod)
        elif isinstance(mod, SwiGLUFFN):
            total += mod.up.out_features  # the gate's product
    return total


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cost(variant: str, d_model: int, d_ff: int, match: str, options: dict) -> int:
    # Parameters are counted on the meta device (no memory, no init); the IAT needs its
    # bases (on the CPU) for the kernel its cost depends on.
    device = "cpu" if match == "flops" and variant == "iat" else "meta"
    ffn = build_ffn(variant, d_model, d_ff, device=device, **options)
    return num_parameters(ffn) if match == "params" else multiply_adds(ffn)


def matched_width(variant: str, d_model: int, d_ff: int, match: str = "params", **options: Any) -> int:
    """The hidden width of ``variant`` whose block has the cost (``match``: parameters or
    multiply-adds per token) closest to the ``mlp`` block of width ``d_ff``; ``d_ff``
    itself for ``match="none"``.  The cost grows with the width, so a bisection finds it."""
    if match not in MATCH_MODES:
        raise ValueError(f"unknown match {match!r}; choose one of {', '.join(MATCH_MODES)}")
    if match == "none":
        return d_ff
    target = _cost("mlp", d_model, d_ff, match, {})
    lo, hi = 1, 4 * d_ff
    while lo < hi:  # smallest width whose cost reaches the target
        mid = (lo + hi) // 2
        if _cost(variant, d_model, mid, match, options) >= target:
            hi = mid
        else:
            lo = mid + 1
    below = max(1, lo - 1)
    costs = {w: abs(_cost(variant, d_model, w, match, options) - target) for w in (below, lo)}
    return min(costs, key=lambda w: (costs[w], w))
