"""FFN variant ``iat``: ``Linear -> IAT -> Linear`` (IAT-ReLU by default)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..iat import IAT


class IATFFN(nn.Module):
    """(..., d_model) -> (..., d_model) with an IAT over the ``d_ff`` hidden units in place
    of the GELU.  ``iat_options`` go to :class:`~unbottleneck.IAT` (``basis``,
    ``num_points``, ``q``, ``implementation``, ...); the default is the library's
    IAT-ReLU: piecewise-linear hats, M = 4 d_ff midpoint nodes, dual output basis.
    The IAT has no parameters, so at equal ``d_ff`` this block has exactly the MLP's."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, device=None, dtype=None,
                 **iat_options: Any) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.up = nn.Linear(d_model, d_ff, bias=bias, **factory)
        self.act = IAT(d_ff, **{"nonlinearity": "relu", **iat_options, **factory})
        self.down = nn.Linear(d_ff, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))
