"""FFN variant ``swiglu``: the gated block of current LLMs, ``W_down (silu(W_gate x) * W_up x)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLUFFN(nn.Module):
    """(..., d_model) -> (..., d_model), ``d_ff`` gated hidden units, no biases (as in
    LLaMA-style models).  The SiLU is a functional call: the recorder's functional
    interception measures it."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.gate = nn.Linear(d_model, d_ff, bias=bias, **factory)
        self.up = nn.Linear(d_model, d_ff, bias=bias, **factory)
        self.down = nn.Linear(d_ff, d_model, bias=bias, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
