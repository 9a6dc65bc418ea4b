"""The LSTM / AWD-LSTM recurrent core: a stack of one-layer LSTMs.

A multi-layer :class:`torch.nn.LSTM` cannot give its last layer a different
width (AWD-LSTM's 400 -> 1150 -> 1150 -> 400 with tied embeddings), apply
locked (variational) dropout between layers, or drop hidden-to-hidden
weights, so the core is a list of one-layer LSTMs, each a
:class:`~unbottleneck.lm.dropout.WeightDropLSTM` (DropConnect on ``weight_hh``,
AWD-LSTM), which is exactly an ``nn.LSTM`` when its rate is 0.  Its call signature matches
``ALSTM``'s so the language model can swap cores.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import positive_int, probability
from .dropout import LockedDropout, WeightDropLSTM

__all__ = ["LSTMStack"]

State = list[tuple[torch.Tensor, torch.Tensor]]


def layer_sizes(input_size: int, hidden_size: int, num_layers: int, output_size: int
                ) -> list[tuple[int, int]]:
    """``(input, hidden)`` width of every layer of a stack whose last layer has
    ``output_size`` units (the others ``hidden_size``)."""
    outs = [hidden_size] * (num_layers - 1) + [output_size]
    ins = [input_size] + outs[:-1]
    return list(zip(ins, outs, strict=True))


class LSTMStack(nn.Module):
    """``num_layers`` one-layer LSTMs with locked dropout between them.

    Args:
        input_size: width of the input.
        hidden_size: width of every layer but the last.
        num_layers: number of layers.
        output_size: width of the last layer (default ``hidden_size``).
        dropout_hidden: locked dropout on each layer's output except the last
            (the caller drops the last one, e.g. ``dropouto``).
        weight_dropout: DropConnect on hidden-to-hidden weights (0: plain nn.LSTM layers).
        batch_first: (B, T, F) instead of (T, B, F).
        device, dtype: factory kwargs.

    Shape:
        x: (T, B, input_size); state: None (zeros) or a list of ``num_layers``
        ``(h, c)`` pairs of shape (1, B, width).  Returns
        ``(output (T, B, output_size), state)``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 output_size: int | None = None, dropout_hidden: float = 0.0,
                 weight_dropout: float = 0.0, batch_first: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            positive_int(name, value)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.output_size = output_size or hidden_size
        self.dropout_hidden = probability("dropout_hidden", dropout_hidden)
        self.weight_dropout = probability("weight_dropout", weight_dropout)
        self.batch_first = batch_first
        factory = {"device": device, "dtype": dtype}
        # Always the wrapper (a plain nn.LSTM call when weight_dropout = 0), so that
        # state_dict keys do not depend on the rate.
        self.layers = nn.ModuleList(
            WeightDropLSTM(n, h, self.weight_dropout, **factory)
            for n, h in layer_sizes(input_size, hidden_size, num_layers, self.output_size)
        )
        self.lockdrop = LockedDropout(self.dropout_hidden)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected input (T, B, {self.input_size}), got {tuple(x.shape)}")
        if state is not None and len(state) != self.num_layers:
            raise ValueError(f"state must hold {self.num_layers} (h, c) pairs, got {len(state)}")
        if self.batch_first:
            x = x.transpose(0, 1)
        new_state: State = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i])
            new_state.append(s)
            if i < self.num_layers - 1:
                x = self.lockdrop(x)
        if self.batch_first:
            x = x.transpose(0, 1)
        return x, new_state

    @staticmethod
    def detach_state(state: State | None) -> State | None:
        if state is None:
            return None
        return [(h.detach(), c.detach()) for h, c in state]

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, output_size={self.output_size}, "
                f"dropout_hidden={self.dropout_hidden}, weight_dropout={self.weight_dropout}")
