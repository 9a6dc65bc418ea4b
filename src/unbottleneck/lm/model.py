"""Word-level recurrent language model (AWD-LSTM style wrapper around the aLSTM of arXiv 1805.08574).

``tokens -> embedding (dropoute) -> locked dropout (dropouti) -> recurrent core
-> locked dropout (dropouto) -> decoder`` with the decoder weight tied to the
embedding (``tie_weights``).  Cores:

=============  =================================================================
``alstm``      :class:`unbottleneck.adaptive.alstm.ALSTM` (adaptive LSTM), with
               ``dropout_hidden = dropouth`` and ``dropout_adapt = dropouta``
               (variational dropout inside the recurrence)
``lstm``       a stack of one-layer :class:`torch.nn.LSTM` with locked dropout
               ``dropouth`` between layers
``awd-lstm``   as ``lstm``, each layer a :class:`WeightDropLSTM` (DropConnect
               ``wdrop`` on the hidden-to-hidden weights)
=============  =================================================================

Layer widths: the first layer reads the embedding (``embedding_size``); every
layer has ``hidden_size`` units except the last, which has ``output_size``
(default: ``embedding_size`` when the weights are tied, else ``hidden_size``).
Tying needs ``output_size == embedding_size``.

Init (AWD-LSTM's): embedding uniform in [-0.1, 0.1], decoder bias zero; the
cores keep their own initialisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from .._validate import positive_int, probability
from .awd import LSTMStack, layer_sizes
from .dropout import LockedDropout, embedding_dropout

__all__ = ["CORES", "LMOutput", "RNNLanguageModel", "alstm_available", "ar_tar_penalty",
           "detach_state", "lstm_parameter_count", "alstm_parameter_count"]

CORES = ("alstm", "lstm", "awd-lstm")


class LMOutput(NamedTuple):
    """What :meth:`RNNLanguageModel.forward` returns.

    logits: (T, B, V) unnormalised next-word scores.
    state: the recurrent state to feed to the next segment.
    raw_output: (T, B, E) last layer output before ``dropouto`` (for TAR).
    output: (T, B, E) the same after ``dropouto`` (for AR); the decoder's input.
    """

    logits: torch.Tensor
    state: Any
    raw_output: torch.Tensor
    output: torch.Tensor


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: Any, what: str = "map") -> Any:
    """Apply ``fn`` to every tensor of a (nested tuple/NamedTuple/list/dict) recurrent
    state, keeping its structure; None stays None, any other leaf raises ``TypeError``
    ("cannot <what> a recurrent state of type ...")."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # NamedTuple
        return type(state)(*(map_state(fn, s, what) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, s, what) for s in state)
    if isinstance(state, dict):
        return {k: map_state(fn, v, what) for k, v in state.items()}
    raise TypeError(f"cannot {what} a recurrent state of type {type(state).__name__}")


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested tuple/list/dict) recurrent state; None stays None."""
    return map_state(torch.Tensor.detach, state, "detach")


def ar_tar_penalty(raw_output: torch.Tensor, output: torch.Tensor, alpha: float,
                   beta: float) -> torch.Tensor:
    """AWD-LSTM's activation regularisation terms, a scalar.

    AR: ``alpha * mean(output ** 2)`` on the dropped last-layer output (keeps
    activations small); TAR: ``beta * mean((h_t - h_{t-1}) ** 2)`` on the raw
    last-layer output (penalises fast changes of the state).  Shapes (T, B, E).
    """
    zero = output.new_zeros(())
    ar = alpha * output.pow(2).mean() if alpha else zero
    tar = beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean() \
        if beta and raw_output.shape[0] > 1 else zero
    return ar + tar


def alstm_available() -> bool:
    """Whether :mod:`unbottleneck.adaptive.alstm` can be imported."""
    try:
        from ..adaptive.alstm import ALSTM  # noqa: F401
    except ImportError:
        return False
    return True


def lstm_parameter_count(vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                         output_size: int | None = None, tie_weights: bool = True) -> int:
    """Closed-form parameter count of the ``lstm``/``awd-lstm`` language model.

    Per layer ``4h (n + h) + 8h`` (two biases, as nn.LSTM); embedding ``V E``;
    decoder ``V`` bias plus ``V E_out`` weights unless tied.
    """
    out = output_size or (embedding_size if tie_weights else hidden_size)
    core = sum(4 * h * (n + h) + 8 * h
               for n, h in layer_sizes(embedding_size, hidden_size, num_layers, out))
    return vocab_size * embedding_size + vocab_size + (0 if tie_weights else vocab_size * out) + core


def alstm_parameter_count(vocab_size: int, embedding_size: int, hidden_size: int, num_layers: int,
                          adapt_size: int, output_size: int | None = None,
                          tie_weights: bool = True) -> int:
    """Closed-form parameter count of the ``alstm`` language model (the paper's PTB / WikiText-2 models).

    Per layer (input n, hidden H, adaptation K): the adaptation LSTMCell reads
    ``[x; h; z]`` (``n + H + K``): ``4K (n + H + K) + 4K K + 8K``; the policy
    ``Pi``: ``K (n + 13 H)``; ``W``: ``4H n``; ``V``: ``4H H``; one bias ``4H``.
    Gives 17,197,800 for the PTB recipe and 32,133,678 for WikiText-2.
    """
    out = output_size or (embedding_size if tie_weights else hidden_size)
    k = adapt_size
    core = sum(4 * k * (n + h + k) + 4 * k * k + 8 * k + k * (n + 13 * h) + 4 * h * n
               + 4 * h * h + 4 * h
               for n, h in layer_sizes(embedding_size, hidden_size, num_layers, out))
    return vocab_size * embedding_size + vocab_size + (0 if tie_weights else vocab_size * out) + core


class RNNLanguageModel(nn.Module):
    """Embedding -> dropouts -> recurrent core -> dropout -> (tied) decoder.

    Args:
        vocab_size: V.
        embedding_size: E, embedding width (and first layer input).
        hidden_size: width of every layer but the last.
        num_layers: number of recurrent layers.
        core: ``"alstm"``, ``"lstm"`` or ``"awd-lstm"`` (see the module doc).
        adapt_size: K, adaptation model width (``alstm`` only).
        output_size: width of the last layer (default E if tied, else ``hidden_size``).
        tie_weights: share the decoder weight with the embedding.
        dropoute: embedding (word-type) dropout.
        dropouti: locked dropout on the embeddings.
        dropouth: ``lstm``/``awd-lstm``: locked dropout between layers;
            ``alstm``: variational dropout on h inside the recurrence.
        dropouta: ``alstm`` only: variational dropout on the adaptation state z.
        dropouto: locked dropout on the last layer output.
        wdrop: ``awd-lstm`` only: DropConnect on hidden-to-hidden weights.
        batch_first: tokens (B, T) and outputs (B, T, ...) instead of (T, B, ...).
        alstm_options: extra keyword arguments of ``ALSTM`` (``alstm`` only), e.g.
            ``{"implementation": "reference", "policy_init": "torch"}``.
        device, dtype: factory kwargs.

    Shape:
        tokens: int64 (T, B); ``state`` None (zeros) or the state returned by a
        previous call.  Returns :class:`LMOutput` with logits (T, B, V).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 400,
        hidden_size: int = 1150,
        num_layers: int = 2,
        core: str = "alstm",
        adapt_size: int = 100,
        output_size: int | None = None,
        tie_weights: bool = True,
        dropoute: float = 0.0,
        dropouti: float = 0.0,
        dropouth: float = 0.0,
        dropouta: float = 0.0,
        dropouto: float = 0.0,
        wdrop: float = 0.0,
        batch_first: bool = False,
        alstm_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if core not in CORES:
            raise ValueError(f"unknown core {core!r}; valid cores: {', '.join(CORES)}")
        for name, value in (("vocab_size", vocab_size), ("embedding_size", embedding_size),
                            ("hidden_size", hidden_size), ("num_layers", num_layers),
                            ("adapt_size", adapt_size)):
            positive_int(name, value)
        if output_size is None:
            output_size = embedding_size if tie_weights else hidden_size
        positive_int("output_size", output_size)
        if tie_weights and output_size != embedding_size:
            raise ValueError(
                f"tie_weights needs the last layer width (output_size={output_size}) to equal "
                f"embedding_size={embedding_size}"
            )
        rates = {k: probability(k, v) for k, v in (
            ("dropoute", dropoute), ("dropouti", dropouti), ("dropouth", dropouth),
            ("dropouta", dropouta), ("dropouto", dropouto), ("wdrop", wdrop))}
        if core != "alstm" and rates["dropouta"] > 0:
            raise ValueError(f"dropouta applies only to the alstm core, not {core!r}")
        if core != "alstm" and alstm_options:
            raise ValueError(f"alstm_options apply only to the alstm core, not {core!r}")
        if core != "awd-lstm" and rates["wdrop"] > 0:
            raise ValueError(f"wdrop (weight drop) applies only to the awd-lstm core, not {core!r}")

        factory = {"device": device, "dtype": dtype}
        # Every forward checks the token ids' range (one device sync); a caller whose ids are
        # valid by construction (LMTrainer, whose corpus maps every word) turns it off.
        self.check_tokens = True
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.core = core
        self.adapt_size = adapt_size
        self.output_size = output_size
        self.tie_weights = tie_weights
        self.batch_first = batch_first
        self.dropoute = rates["dropoute"]
        self.dropouti = rates["dropouti"]
        self.dropouth = rates["dropouth"]
        self.dropouta = rates["dropouta"]
        self.dropouto = rates["dropouto"]
        self.wdrop = rates["wdrop"]

        self.encoder = nn.Embedding(vocab_size, embedding_size, **factory)
        self.lockdrop = LockedDropout(0.0)
        if core == "alstm":
            try:
                from ..adaptive.alstm import ALSTM
            except ImportError as exc:
                raise ImportError(
                    "the 'alstm' core needs unbottleneck.adaptive.alstm.ALSTM, which could not be "
                    f"imported ({exc}); use core='lstm' or 'awd-lstm'"
                ) from exc
            self.rnn = ALSTM(embedding_size, hidden_size, adapt_size, num_layers=num_layers,
                             output_size=output_size, dropout_hidden=self.dropouth,
                             dropout_adapt=self.dropouta, batch_first=False,
                             **dict(alstm_options or {}), **factory)
        else:
            self.rnn = LSTMStack(embedding_size, hidden_size, num_layers, output_size=output_size,
                                 dropout_hidden=self.dropouth, weight_dropout=self.wdrop, **factory)
        self.decoder = nn.Linear(output_size, vocab_size, **factory)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AWD-LSTM's init of the embedding and decoder (the core keeps its own)."""
        with torch.no_grad():
            self.encoder.weight.uniform_(-0.1, 0.1)
            self.decoder.bias.zero_()
            if not self.tie_weights:
                self.decoder.weight.uniform_(-0.1, 0.1)

    @staticmethod
    def detach_state(state: Any) -> Any:
        """Cut the graph between BPTT segments (see :func:`detach_state`)."""
        return detach_state(state)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a tensor, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be int64 (or int32) ids, got {tokens.dtype}")
        if tokens.dim() != 2:
            layout = "(B, T)" if self.batch_first else "(T, B)"
            raise ValueError(f"tokens must be {layout}, got shape {tuple(tokens.shape)}")
        if tokens.numel() and self.check_tokens:
            lo, hi = torch.stack(torch.aminmax(tokens)).tolist()  # one pass, one device sync
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got range [{lo}, {hi}]")

    def forward(self, tokens: torch.Tensor, state: Any = None) -> LMOutput:
        self._check_tokens(tokens)
        if self.batch_first:
            tokens = tokens.t()
        emb = embedding_dropout(self.encoder.weight, tokens, self.dropoute, self.training)
        x = self.lockdrop(emb, self.dropouti)
        raw, new_state = self.rnn(x, state)
        out = self.lockdrop(raw, self.dropouto)
        logits = self.decoder(out)
        if self.batch_first:
            logits, raw, out = logits.transpose(0, 1), raw.transpose(0, 1), out.transpose(0, 1)
        return LMOutput(logits, new_state, raw, out)

    def extra_repr(self) -> str:
        return (f"core={self.core!r}, vocab_size={self.vocab_size}, tie_weights={self.tie_weights}, "
                f"dropoute={self.dropoute}, dropouti={self.dropouti}, dropouth={self.dropouth}, "
                f"dropouta={self.dropouta}, dropouto={self.dropouto}, wdrop={self.wdrop}")
