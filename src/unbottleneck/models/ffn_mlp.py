"""FFN variant ``mlp``: ``Linear -> GELU -> Linear``, the transformer's baseline block
(``activation="relu"``: the same with a ReLU, the control that separates "ReLU" from "IAT")."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class MLPFFN(nn.Module):
    """(..., d_model) -> (..., d_model) through ``d_ff`` hidden units and a GELU (or ReLU)
    module (a module, not ``F.gelu``, so that :func:`~unbottleneck.swap_activations` finds it)."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, device=None, dtype=None,
                 activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} for ffn='mlp'; choose one of "
                             f"{', '.join(ACTIVATIONS)}")
        factory = {"device": device, "dtype": dtype}
        self.up = nn.Linear(d_model, d_ff, bias=bias, **factory)
        self.act = ACTIVATIONS[activation]()
        self.down = nn.Linear(d_ff, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))
