"""Dropout variants of AWD-LSTM style language models.

* :func:`embedding_dropout` (``dropoute``): drops whole rows of the embedding
  matrix, i.e. every occurrence of a word type in the batch at once, and
  rescales the kept rows by ``1 / (1 - p)``.
* :class:`LockedDropout` (``dropouti``/``dropouth``/``dropouto``): variational
  dropout, one mask per sequence and feature shared over all time steps.
* :class:`WeightDropLSTM` (``wdrop``): DropConnect on the hidden-to-hidden
  weights of a one-layer LSTM.  The raw weight stays the trainable Parameter;
  every training forward draws a fresh mask, builds the dropped weight, and
  runs the LSTM with it through :func:`torch.func.functional_call`, so the
  mask is part of the autograd graph and the raw weight receives the
  gradient.  No parameter is deleted or re-registered and no
  ``flatten_parameters`` trick is needed, which keeps ``state_dict``,
  ``.to()`` and optimisers working on current PyTorch.

All masks come from the global torch RNG (like ``nn.Dropout``), so a run is
reproducible from ``torch.manual_seed`` and resumable from the RNG state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .._validate import probability

__all__ = ["LockedDropout", "WeightDropLSTM", "embedding_dropout"]


def embedding_dropout(weight: torch.Tensor, tokens: torch.Tensor, p: float,
                      training: bool = True) -> torch.Tensor:
    """Embed ``tokens`` with whole word rows of ``weight`` dropped with probability ``p``.

    Args:
        weight: (V, E) embedding matrix.
        tokens: int64 ids of any shape (...).
        p: probability of dropping a word type (its whole row).
        training: apply the dropout only when true.

    Returns:
        (..., E) embeddings; kept rows are scaled by ``1 / (1 - p)`` so the
        expectation is unchanged.
    """
    if not training or p == 0.0:
        return F.embedding(tokens, weight)
    mask = torch.empty(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    mask.bernoulli_(1.0 - p).div_(1.0 - p)
    return F.embedding(tokens, weight * mask)


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence and feature, shared over time.

    Args:
        p: drop probability.
        batch_first: inputs are (B, T, F) instead of (T, B, F).

    Shape: (T, B, F) (or (B, T, F)) in and out.  In eval mode, or with
    ``p = 0``, the input is returned unchanged.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False) -> None:
        super().__init__()
        self.p = probability("p", p)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor, p: float | None = None) -> torch.Tensor:
        p = self.p if p is None else probability("p", p)
        if not self.training or p == 0.0:
            return x
        if x.dim() != 3:
            raise ValueError(f"LockedDropout expects a 3-D input (T, B, F), got {tuple(x.shape)}")
        shape = (x.shape[0], 1, x.shape[2]) if self.batch_first else (1, x.shape[1], x.shape[2])
        mask = x.new_empty(shape).bernoulli_(1.0 - p).div_(1.0 - p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}, batch_first={self.batch_first}"


class WeightDropLSTM(nn.Module):
    """One-layer :class:`torch.nn.LSTM` with DropConnect on ``weight_hh_l0``.

    Args:
        input_size, hidden_size, bias, batch_first: as for :class:`torch.nn.LSTM`.
        weight_dropout: probability of zeroing each hidden-to-hidden weight
            (the mask is shared by all time steps and sequences of a forward,
            and redrawn on the next forward).
        device, dtype: factory kwargs.

    The parameters are those of the inner ``self.lstm`` (so ``state_dict``
    keys are ``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``, ...); the raw
    ``weight_hh_l0`` is what the optimiser updates.

    Shape: ``x`` (T, B, input_size) (or (B, T, ...) with ``batch_first``),
    ``state`` an ``(h, c)`` pair of (1, B, hidden_size) or None; returns
    ``(output, (h, c))`` exactly like ``nn.LSTM``.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0,
                 bias: bool = True, batch_first: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight_dropout = probability("weight_dropout", weight_dropout)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=1, bias=bias,
                            batch_first=batch_first, device=device, dtype=dtype)

    @property
    def input_size(self) -> int:
        return self.lstm.input_size

    @property
    def hidden_size(self) -> int:
        return self.lstm.hidden_size

    def dropped_weight(self) -> torch.Tensor:
        """The hidden-to-hidden weight used by this forward: (4H, H), masked in training."""
        raw = self.lstm.weight_hh_l0
        if not self.training or self.weight_dropout == 0.0:
            return raw
        return F.dropout(raw, self.weight_dropout, training=True)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if not self.training or self.weight_dropout == 0.0:
            return self.lstm(x, state)
        return functional_call(self.lstm, {"weight_hh_l0": self.dropped_weight()}, (x, state))

    def extra_repr(self) -> str:
        return f"weight_dropout={self.weight_dropout}"
