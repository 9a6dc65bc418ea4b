"""FFN variant ``adaptive``: the first projection an :class:`~unbottleneck.AdaptiveLinear`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adaptive import AdaptiveLinear


class AdaptiveFFN(nn.Module):
    """(..., d_model) -> (..., d_model): ``Linear(GELU(AdaptiveLinear(x)))``.

    The adaptive projection's policy is conditioned on the block input ``x`` (the
    normalised residual stream each token brings to the FFN), ``policy`` ``"sva"``
    (default; rank ``min(d_model, d_ff)``) or ``"io"``; ``adaptive_options`` go to
    :class:`~unbottleneck.AdaptiveLinear` (``rank``, ``policy_net``, ...).
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, device=None, dtype=None,
                 policy: str = "sva", **adaptive_options: Any) -> None:
        super().__init__()
        if policy not in ("sva", "io"):
            raise ValueError(f"the adaptive FFN takes policy 'sva' or 'io', got {policy!r}")
        factory = {"device": device, "dtype": dtype}
        self.up = AdaptiveLinear(d_model, d_ff, policy=policy, bias=bias, **adaptive_options, **factory)
        self.act = nn.GELU()
        self.down = nn.Linear(d_ff, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))
