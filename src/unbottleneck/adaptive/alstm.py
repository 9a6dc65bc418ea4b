"""Adaptive LSTM (aLSTM; arXiv 1805.08574): an LSTM whose weights adapt at every step.

One layer (:class:`ALSTMCell`) with input size n, hidden size H and adaptation
size K computes, at step t,

* adaptation model: ``z_t = LSTMCell([x_t ; h_{t-1} ; z_below], z_{t-1})`` (width K,
  torch's ``nn.LSTMCell`` with its two bias vectors);
* policy: ``pi = tanh(Pi z_t)`` (Pi bias-free, K -> n + 13H), split in order into
  ``pi_x`` (n), ``pi_h`` (H), ``pi_u`` (4H), ``pi_v`` (4H), ``pi_b`` (4H);
* gates: ``a = pi_u * W (pi_x * x_t) + pi_v * V (pi_h * h_{t-1}) + pi_b * b``,
  ``i, f, g, o = split(a, 4)``, ``c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)``,
  ``h_t = sigmoid(o) tanh(c_t)``.

:class:`ALSTM` stacks layers step-major: at step t layer l reads layer l-1's
(dropped) ``h`` and ``z`` of the same step; layer 0 reads the *top* layer's ``z`` of
step t-1 (wrap-around; zeros at the start unless carried in the state).

Dropout (variational, one mask per forward call fixed over time, training only)
multiplies ``h_t`` (rate ``dropout_hidden``) and ``z_t`` (rate ``dropout_adapt``).
The dropped values are what every consumer reads -- the next step, the next
layer, the policy -- and what the returned state holds.  The *output* of the
stack is the top layer's ``h_t`` before its dropout: an LM wrapper applies its
own output dropout (as in AWD-LSTM and the original aLSTM code).

Two implementations of the same map (``implementation=``):

* ``"reference"``: a per-step Python loop over :class:`ALSTMCell` modules with
  plain autograd.  Obviously correct; supports double backward and
  ``torch.compile``.  It is the oracle of the tests.
* ``"fused"``: :mod:`unbottleneck.adaptive.alstm_fused`, one custom autograd
  function over the whole sequence and all layers with a hand-written BPTT
  backward (weight gradients as one GEMM over all steps).  ``"auto"`` uses it,
  except while ``torch.compile`` traces (it falls back to the reference there).
  It reads the cells' parameters directly, so forward hooks on the ``adapt`` /
  ``policy`` submodules only fire on the reference path.  On CPU it recycles its
  large per-call buffers (activations saved for backward, backward scratch) between
  calls instead of re-allocating them; ``alstm_fused.clear_buffer_cache()`` releases
  them and ``settings.set_settings(alstm_cache_buffers=False)`` turns recycling off.

Initialisation (see :meth:`ALSTMCell.reset_parameters`, options
``weight_init=`` and ``policy_init=``):

* ``W``, ``V``: orthogonal per gate block by default (each of the 4 blocks of W
  and V is an isometry, so every gate sees its input at unit gain; ``"orthogonal"``
  draws the whole (4H, n) matrix at once as the original code does, which leaves
  each gate about half the gain).  ``b``: zeros, +1 on the forget slice.
* The policy must not start at ``tanh(Pi z) ~ 0``: ``pi_u * W (pi_x * x)`` is a
  product of two policies, so with torch's default inits (``|pi| ~ 0.04`` at PTB
  sizes) every gate pre-activation is ~1e-3 of an LSTM's and the layer starts
  nearly dead.  The default ``policy_init="lstm"`` starts the cell near a standard
  LSTM instead: the adaptation cell's candidate (g) bias is +1, so its hidden
  state settles at ``z ~ z0 = sigmoid(0) tanh(tanh(1)) ~ 0.32`` per unit, and
  ``Pi = 1 / (K z0) + N(0, (0.3 / (sqrt(K) z0))^2)``, so that ``Pi z ~ 1 +- 0.3`` and
  ``pi ~ tanh(1) ~ 0.76`` with some spread across units, inputs and time (the
  adaptation signal).  ``policy_init="zero_mean"`` draws ``Pi`` zero-mean with
  ``Pi z ~ N(0, 1)`` (policies of random sign, ``|pi| ~ 0.6``);
  ``policy_init="torch"`` keeps torch's defaults (the original code's init).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .._validate import choice, positive_int, probability
from .alstm_original import POLICY_LAYOUTS, convert_original_state_dict, policy_index, policy_slices

IMPLEMENTATIONS = ("auto", "fused", "reference")
WEIGHT_INITS = ("orthogonal_per_gate", "orthogonal")
POLICY_INITS = ("lstm", "zero_mean", "torch")

# Steady-state adaptation hidden value under policy_init="lstm" (zero weights,
# zero input): c* = sigmoid(0) tanh(1) / (1 - sigmoid(0)) = tanh(1),
# z* = sigmoid(0) tanh(c*).
_Z0 = 0.5 * math.tanh(math.tanh(1.0))


class ALSTMCellState(NamedTuple):
    """State of one aLSTM layer; every field is (B, size) (or (size,) unbatched).

    Attributes:
        h: (B, H) hidden state as the next step reads it (after ``h`` dropout).
        c: (B, H) cell state.
        z_h: (B, K) adaptation model hidden state (after ``z`` dropout).
        z_c: (B, K) adaptation model cell state.
    """

    h: Tensor
    c: Tensor
    z_h: Tensor
    z_c: Tensor


#: State of an :class:`ALSTM`: one :class:`ALSTMCellState` per layer, bottom first.
ALSTMState = tuple[ALSTMCellState, ...]


class ALSTMMasks(NamedTuple):
    """Variational dropout masks of one forward call, one entry per layer.

    Each entry is ``None`` (no dropout) or a (B, size) tensor of ``0`` and
    ``1 / (1 - p)`` that multiplies ``h_t`` (``h``, size H_l) or ``z_t`` (``z``, size K)
    at every step.
    """

    h: tuple[Tensor | None, ...]
    z: tuple[Tensor | None, ...]


class ALSTMCell(nn.Module):
    """One aLSTM layer for one time step.

    Args:
        input_size: n, features of ``x_t``.
        hidden_size: H.
        adapt_size: K, width of the adaptation model.
        weight_init: ``"orthogonal_per_gate"`` (default) or ``"orthogonal"`` (whole
            matrix), for ``weight_ih`` (W) and ``weight_hh`` (V); see the module doc.
        policy_init: ``"lstm"`` (default), ``"zero_mean"`` or ``"torch"``; see the module doc.
        policy_layout: ``"contiguous"`` (default: ``pi_x, pi_h, pi_u, pi_v, pi_b`` are
            consecutive slices of ``pi``) or ``"original"`` (the slices the published code
            takes as it runs; :mod:`~unbottleneck.adaptive.alstm_original`).

    Parameters:
        adapt: ``nn.LSTMCell(n + H + K, K)``, the adaptation model (input order x, h, z_below).
        policy: ``nn.Linear(K, n + 13H, bias=False)``, Pi.
        weight_ih: (4H, n) W.  weight_hh: (4H, H) V.  bias: (4H,) b.  Gate order i, f, g, o.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        adapt_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_init: str = "orthogonal_per_gate",
        policy_init: str = "lstm",
        policy_layout: str = "contiguous",
    ) -> None:
        super().__init__()
        n = positive_int("input_size", input_size)
        H = positive_int("hidden_size", hidden_size)
        K = positive_int("adapt_size", adapt_size)
        self.policy_layout = choice("policy_layout", policy_layout, POLICY_LAYOUTS)
        self.weight_init = choice("weight_init", weight_init, WEIGHT_INITS)
        self.policy_init = choice("policy_init", policy_init, POLICY_INITS)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.adapt_size = n, H, K
        self.adapt = nn.LSTMCell(n + H + K, K, **factory)
        self.policy = nn.Linear(K, n + 13 * H, bias=False, **factory)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, n, **factory))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H, **factory))
        self.bias = nn.Parameter(torch.empty(4 * H, **factory))
        self.reset_parameters()

    @property
    def policy_sizes(self) -> tuple[int, int, int, int, int]:
        """Sizes of ``pi_x, pi_h, pi_u, pi_v, pi_b`` in the policy output."""
        n, H = self.input_size, self.hidden_size
        return (n, H, 4 * H, 4 * H, 4 * H)

    def split_policy(self, pi: Tensor) -> tuple[Tensor, ...]:
        """(..., n + 13H) -> ``pi_x, pi_h, pi_u, pi_v, pi_b`` as the layout slices them."""
        return tuple(pi.narrow(-1, start, size)
                     for start, size in policy_slices(self.input_size, self.hidden_size, self.policy_layout))

    def policy_weight(self) -> Tensor:
        """(n + 13H, K) rows of Pi whose ``tanh(. z)`` is ``[pi_x ; pi_h ; pi_u ; pi_v ; pi_b]``.

        ``Pi`` itself for the contiguous layout; for the original one a gather of its rows
        (differentiable: overlapping slices add their gradients), which lets the fused path
        run either layout unchanged.
        """
        w = self.policy.weight
        if self.policy_layout == "contiguous":
            return w
        return w.index_select(0, policy_index(self.input_size, self.hidden_size, self.policy_layout,
                                              device=w.device))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw all weights as documented in the module doc."""
        H, K = self.hidden_size, self.adapt_size
        for w in (self.weight_ih, self.weight_hh):
            if self.weight_init == "orthogonal":
                nn.init.orthogonal_(w)
            else:
                for block in w.split(H, dim=0):
                    nn.init.orthogonal_(block)
        self.bias.zero_()
        self.bias[H:2 * H] = 1.0  # forget gate
        self.adapt.reset_parameters()  # torch's LSTMCell init: U(-1/sqrt(K), 1/sqrt(K))
        self.policy.reset_parameters()
        if self.policy_init == "torch":
            return
        # A bias-driven adaptation state z ~ z0 > 0 at every unit, independent of the
        # input scale; the input-driven part of the pre-activations is its variation.
        self.adapt.bias_ih.zero_()
        self.adapt.bias_hh.zero_()
        self.adapt.bias_ih[2 * K:3 * K] = 1.0
        if self.policy_init == "lstm":
            self.policy.weight.normal_(1.0 / (K * _Z0), 0.3 / (math.sqrt(K) * _Z0))
        else:  # zero_mean
            self.policy.weight.normal_(0.0, 1.0 / (math.sqrt(K) * _Z0))

    def init_state(self, batch_size: int | None = None) -> ALSTMCellState:
        """Zero state, (B, size) per field ((size,) if ``batch_size`` is None)."""
        lead = () if batch_size is None else (positive_int("batch_size", batch_size),)
        p = self.weight_ih
        H, K = self.hidden_size, self.adapt_size
        z = [torch.zeros(*lead, s, device=p.device, dtype=p.dtype) for s in (H, H, K, K)]
        return ALSTMCellState(*z)

    def adaptation(self, x: Tensor, state: ALSTMCellState, z_below: Tensor) -> tuple[Tensor, Tensor]:
        """Adaptation model step: (B, n), state, (B, K) -> new (z_h, z_c), each (B, K), undropped."""
        inp = torch.cat([x, state.h, z_below], dim=-1)
        return self.adapt(inp, (state.z_h, state.z_c))

    def forward(
        self,
        x: Tensor,
        state: ALSTMCellState | None = None,
        z_below: Tensor | None = None,
        h_mask: Tensor | None = None,
        z_mask: Tensor | None = None,
        fix_policy: bool = False,
    ) -> ALSTMCellState:
        """One step.

        Args:
            x: (B, n) input ``x_t``.
            state: this layer's state at t-1 (:class:`ALSTMCellState`, zeros if None).
            z_below: (B, K) adaptation state of the layer below at t (for layer 0 of a
                stack: the top layer's at t-1); zeros if None.
            h_mask, z_mask: optional (B, H) / (B, K) dropout masks multiplying the new
                ``h`` and ``z_h``.
            fix_policy: use ``pi = 1`` everywhere: the cell is then a standard LSTM
                with ``weight_ih = W``, ``weight_hh = V``, ``bias_ih = b``, ``bias_hh = 0``.

        Returns:
            The new state (h, c, z_h, z_c), each (B, size), with ``h`` and ``z_h`` dropped.
        """
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"ALSTMCell expects x of shape (B, {self.input_size}) or ({self.input_size},), "
                f"got {tuple(x.shape)}"
            )
        if state is None:
            state = self.init_state(x.shape[0] if x.dim() == 2 else None)
        if z_below is None:
            z_below = torch.zeros_like(state.z_h)
        z_h, z_c = self.adaptation(x, state, z_below)
        if z_mask is not None:
            z_h = z_h * z_mask
        if fix_policy:
            pi_x = pi_h = 1.0
            pi_u = pi_v = pi_b = 1.0
        else:
            pi = torch.tanh(self.policy(z_h))
            pi_x, pi_h, pi_u, pi_v, pi_b = self.split_policy(pi)
        a = (
            pi_u * nn.functional.linear(pi_x * x, self.weight_ih)
            + pi_v * nn.functional.linear(pi_h * state.h, self.weight_hh)
            + pi_b * self.bias
        )
        i, f, g, o = a.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if h_mask is not None:
            h = h * h_mask
        return ALSTMCellState(h, c, z_h, z_c)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"adapt_size={self.adapt_size}, weight_init={self.weight_init}, "
            f"policy_init={self.policy_init}, policy_layout={self.policy_layout}"
        )


class ALSTM(nn.Module):
    """Multi-layer adaptive LSTM (drop-in shaped like ``nn.LSTM``).

    Args:
        input_size: features of the input.
        hidden_size: H of every layer except the last.
        adapt_size: K, adaptation model width (same for every layer).
        num_layers: number of stacked layers.
        output_size: H of the last layer (default ``hidden_size``).
        dropout_hidden: variational dropout rate on every layer's ``h`` (training only).
        dropout_adapt: variational dropout rate on every layer's ``z`` (training only).
        batch_first: input and output are (B, T, features) instead of (T, B, features).
        implementation: ``"auto"`` (fused, reference under ``torch.compile``),
            ``"fused"`` or ``"reference"``.
        weight_init, policy_init, policy_layout: passed to every :class:`ALSTMCell`
            (``policy_layout="original"``: the published code's as-run policy split).

    Shape:
        x: (T, B, input_size) (``(B, T, input_size)`` if ``batch_first``) or unbatched
        (T, input_size).  Output: (T, B, H_last) (resp. (B, T, H_last), (T, H_last)),
        the top layer's ``h_t`` before its dropout.  State: :data:`ALSTMState`, a tuple
        of one :class:`ALSTMCellState` per layer with (B, size) fields ((size,) unbatched).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        adapt_size: int,
        num_layers: int = 1,
        output_size: int | None = None,
        dropout_hidden: float = 0.0,
        dropout_adapt: float = 0.0,
        batch_first: bool = False,
        implementation: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        weight_init: str = "orthogonal_per_gate",
        policy_init: str = "lstm",
        policy_layout: str = "contiguous",
    ) -> None:
        super().__init__()
        n = positive_int("input_size", input_size)
        H = positive_int("hidden_size", hidden_size)
        K = positive_int("adapt_size", adapt_size)
        L = positive_int("num_layers", num_layers)
        self.policy_layout = choice("policy_layout", policy_layout, POLICY_LAYOUTS)
        out = H if output_size is None else positive_int("output_size", output_size)
        self.input_size, self.hidden_size, self.adapt_size = n, H, K
        self.num_layers, self.output_size = L, out
        self.dropout_hidden = probability("dropout_hidden", dropout_hidden)
        self.dropout_adapt = probability("dropout_adapt", dropout_adapt)
        if not isinstance(batch_first, bool):
            raise TypeError(f"batch_first must be a bool, got {batch_first!r}")
        self.batch_first = batch_first
        self.implementation = choice("implementation", implementation, IMPLEMENTATIONS)
        hidden = [H] * (L - 1) + [out]
        inputs = [n] + hidden[:-1]
        self.layers = nn.ModuleList(
            ALSTMCell(i, h, K, device=device, dtype=dtype, weight_init=weight_init,
                      policy_init=policy_init, policy_layout=policy_layout)
            for i, h in zip(inputs, hidden, strict=True)
        )

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Hidden size of every layer, bottom first."""
        return tuple(cell.hidden_size for cell in self.layers)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for cell in self.layers:
            cell.reset_parameters()

    def load_original_state_dict(self, state_dict: dict[str, Tensor], prefix: str | None = None) -> None:
        """Load weights saved by the published aLSTM code (its ``aLSTM`` module's names).

        The module must be built with ``policy_layout="original"``: those weights were
        trained with the as-run policy split, and under the contiguous split they would
        compute a different function.  See :mod:`~unbottleneck.adaptive.alstm_original`.
        """
        if self.policy_layout != "original":
            raise ValueError("weights from the published aLSTM code were trained with its as-run "
                             "policy split; build ALSTM(..., policy_layout='original') to load them")
        self.load_state_dict(convert_original_state_dict(state_dict, self.num_layers, prefix))

    # -- state and masks ----------------------------------------------------------------
    def init_state(self, batch_size: int | None) -> ALSTMState:
        """Zero state for ``batch_size`` sequences (None: unbatched)."""
        return tuple(cell.init_state(batch_size) for cell in self.layers)

    @staticmethod
    def detach_state(state: ALSTMState) -> ALSTMState:
        """The same state cut from the autograd graph (between BPTT segments)."""
        return tuple(ALSTMCellState(*(t.detach() for t in s)) for s in state)

    def sample_masks(self, batch_size: int, generator: torch.Generator | None = None) -> ALSTMMasks:
        """Fresh variational dropout masks (``None`` entries where the rate is 0)."""
        p = self.layers[0].weight_ih

        def mask(size: int, rate: float) -> Tensor | None:
            if rate == 0.0:
                return None
            m = torch.empty(batch_size, size, device=p.device, dtype=p.dtype)
            return m.bernoulli_(1.0 - rate, generator=generator).div_(1.0 - rate)

        return ALSTMMasks(
            h=tuple(mask(h, self.dropout_hidden) for h in self.layer_sizes),
            z=tuple(mask(self.adapt_size, self.dropout_adapt) for _ in self.layers),
        )

    # -- checks ---------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ALSTM expects a torch.Tensor input, got {type(x).__name__}")
        layout = "(B, T, input_size)" if self.batch_first else "(T, B, input_size)"
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_size:
            raise ValueError(
                f"ALSTM expects input of shape {layout} or (T, input_size) with "
                f"input_size={self.input_size}, got {tuple(x.shape)}"
            )
        p = self.layers[0].weight_ih
        if x.dtype != p.dtype:
            raise TypeError(f"ALSTM input dtype {x.dtype} does not match its parameters' {p.dtype}")
        if x.device != p.device:
            raise ValueError(f"ALSTM input on {x.device}, parameters on {p.device}")

    def _check_state(self, state: object, batch_size: int | None) -> ALSTMState:
        """The state as a tuple of :class:`ALSTMCellState`, each field (batch_size, size), or
        (size,) when ``batch_size`` is None (an unbatched input)."""
        if not isinstance(state, (tuple, list)) or len(state) != self.num_layers:
            raise ValueError(
                f"ALSTM state must be a tuple of {self.num_layers} per-layer (h, c, z_h, z_c) "
                f"states, got {type(state).__name__} of length {len(state) if isinstance(state, (tuple, list)) else '?'}"
            )
        p = self.layers[0].weight_ih
        out = []
        for layer, (s, cell) in enumerate(zip(state, self.layers, strict=True)):
            if not isinstance(s, (tuple, list)) or len(s) != 4:
                raise ValueError(f"ALSTM state of layer {layer} must be (h, c, z_h, z_c)")
            sizes = (cell.hidden_size, cell.hidden_size, cell.adapt_size, cell.adapt_size)
            for name, t, size in zip(ALSTMCellState._fields, s, sizes, strict=True):
                want = (size,) if batch_size is None else (batch_size, size)
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != want:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    empty = " (an empty batch)" if batch_size == 0 else ""
                    raise ValueError(f"ALSTM state layer {layer} {name}: expected shape {want}{empty}, "
                                     f"got {got}")
                if t.dtype != p.dtype or t.device != p.device:
                    raise TypeError(
                        f"ALSTM state layer {layer} {name}: {t.dtype} on {t.device}, "
                        f"expected {p.dtype} on {p.device}"
                    )
            out.append(ALSTMCellState(*s))
        return tuple(out)

    def _check_masks(self, masks: object, batch_size: int) -> ALSTMMasks:
        if not isinstance(masks, ALSTMMasks):
            raise TypeError(f"masks must be an ALSTMMasks, got {type(masks).__name__}")
        for kind, sizes in (("h", self.layer_sizes), ("z", (self.adapt_size,) * self.num_layers)):
            entries = getattr(masks, kind)
            if len(entries) != self.num_layers:
                raise ValueError(f"masks.{kind} needs {self.num_layers} entries, got {len(entries)}")
            for layer, (m, size) in enumerate(zip(entries, sizes, strict=True)):
                if m is not None and tuple(m.shape) != (batch_size, size):
                    raise ValueError(
                        f"masks.{kind}[{layer}]: expected shape {(batch_size, size)}, got {tuple(m.shape)}"
                    )
        return masks

    def _use_fused(self) -> bool:
        if self.implementation == "reference":
            return False
        if self.implementation == "auto" and torch.compiler.is_compiling():
            return False  # the custom Function's Python loop is not traceable; see module doc
        return True

    # -- forward -------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        state: ALSTMState | None = None,
        *,
        masks: ALSTMMasks | None = None,
        fix_policy: bool = False,
    ) -> tuple[Tensor, ALSTMState]:
        """Run the stack over a sequence.

        Args:
            x: (T, B, input_size), (B, T, input_size) if ``batch_first``, or (T, input_size).
            state: None (zeros) or the state returned by a previous call (carried across
                BPTT segments; use :meth:`detach_state` to cut the graph).
            masks: dropout masks to use (any mode); default: fresh ones from
                :meth:`sample_masks` in training mode, none in eval mode.
            fix_policy: every policy fixed to 1 (the stack is then a standard LSTM).

        Returns:
            (output, state): output (T, B, H_last) (batch-first / unbatched likewise), the
            top layer's ``h_t`` before dropout; the final :data:`ALSTMState`.
        """
        if isinstance(x, nn.utils.rnn.PackedSequence):
            return self._forward_packed(x, state, masks, fix_policy)
        p = self.layers[0].weight_ih
        if isinstance(x, torch.Tensor) and x.is_floating_point() and torch.is_autocast_enabled(x.device.type):
            # Precision policy under autocast: the recurrence (and the state it carries across
            # segments) stays in the parameters' dtype; the output returns in the input's dtype.
            with torch.autocast(x.device.type, enabled=False):
                out, state = self.forward(x.to(p.dtype), state, masks=masks, fix_policy=fix_policy)
            return out.to(x.dtype), state
        self._check_input(x)
        if x.dim() == 3 and x.shape[0 if self.batch_first else 1] == 0:
            return self._empty_batch(x, state)
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        state, masks = self._state_and_masks(state, masks, x.shape[1], unbatched)
        if self._use_fused():
            from .alstm_fused import alstm_fused

            out, state = alstm_fused(self, x, state, masks, fix_policy)
        else:
            out, state = alstm_reference(self, x, state, masks, fix_policy)

        if unbatched:
            return out.squeeze(1), tuple(ALSTMCellState(*(t.squeeze(0) for t in s)) for s in state)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, state

    def _forward_packed(self, x: nn.utils.rnn.PackedSequence, state: ALSTMState | None,
                        masks: ALSTMMasks | None, fix_policy: bool) -> tuple[nn.utils.rnn.PackedSequence, ALSTMState]:
        """Variable-length batches, as ``nn.LSTM`` takes them: each sequence stops at its own
        length, its final state is the one at that length, the output is packed the same way.

        Runs the per-step loop (:func:`alstm_reference` with ``lengths``); ``batch_first`` does not apply.
        """
        padded, lengths = nn.utils.rnn.pad_packed_sequence(x)  # (T, B, n), original batch order
        self._check_input(padded)
        state, masks = self._state_and_masks(state, masks, padded.shape[1])
        out, state = alstm_reference(self, padded, state, masks, fix_policy, lengths=lengths.to(padded.device))
        return nn.utils.rnn.pack_padded_sequence(out, lengths, enforce_sorted=False), state

    def _state_and_masks(self, state: ALSTMState | None, masks: ALSTMMasks | None, batch_size: int,
                         unbatched: bool = False) -> tuple[ALSTMState, ALSTMMasks]:
        """The checked (batch_size, size) state (zeros if None) and masks (fresh if None)."""
        if state is None:
            state = self.init_state(batch_size)
        else:
            state = self._check_state(state, None if unbatched else batch_size)
            if unbatched:
                state = tuple(ALSTMCellState(*(t.unsqueeze(0) for t in s)) for s in state)
        if masks is None:
            masks = self.sample_masks(batch_size) if self.training else ALSTMMasks(
                (None,) * self.num_layers, (None,) * self.num_layers)
        else:
            masks = self._check_masks(masks, batch_size)
        return state, masks

    def _empty_batch(self, x: Tensor, state: ALSTMState | None) -> tuple[Tensor, ALSTMState]:
        """A batch of 0 sequences, as ``nn.LSTM`` takes it: empty output and state."""
        if state is not None:
            self._check_state(state, 0)
        p = self.layers[0].weight_ih
        T = x.shape[1 if self.batch_first else 0]
        shape = (0, T, self.output_size) if self.batch_first else (T, 0, self.output_size)
        empty = tuple(ALSTMCellState(*(p.new_zeros(0, t.shape[-1]) for t in s)) for s in self.init_state(None))
        return x.new_zeros(shape), empty

    def extra_repr(self) -> str:
        s = (
            f"{self.input_size}, {self.hidden_size}, adapt_size={self.adapt_size}, "
            f"num_layers={self.num_layers}"
        )
        if self.output_size != self.hidden_size:
            s += f", output_size={self.output_size}"
        if self.dropout_hidden or self.dropout_adapt:
            s += f", dropout_hidden={self.dropout_hidden}, dropout_adapt={self.dropout_adapt}"
        if self.batch_first:
            s += ", batch_first=True"
        if self.policy_layout != "contiguous":
            s += f", policy_layout={self.policy_layout}"
        return s + f", implementation={self.implementation}"


def alstm_reference(
    module: ALSTM, x: Tensor, state: ALSTMState, masks: ALSTMMasks, fix_policy: bool = False,
    lengths: Tensor | None = None,
) -> tuple[Tensor, ALSTMState]:
    """Per-step Python loop over the cells, plain autograd (the oracle).

    Args:
        module: the :class:`ALSTM` whose cells to run.
        x: (T, B, n) time-major input.  state: per-layer (B, size) states.
        masks: dropout masks (entries may be None).
        lengths: (B,) true lengths of padded sequences (a packed input): a sequence's state
            stops changing after its last step and its outputs beyond it are zero.

    Returns:
        (T, B, H_last) top-layer outputs before dropout and the final state.
    """
    state = list(state)
    outputs = []
    top = len(module.layers) - 1
    for t, x_t in enumerate(x.unbind(0)):
        active = None if lengths is None else (t < lengths).unsqueeze(-1)  # (B, 1) still running
        inp = x_t
        for layer, cell in enumerate(module.layers):
            z_below = state[top].z_h if layer == 0 else state[layer - 1].z_h
            new = cell(inp, state[layer], z_below, z_mask=masks.z[layer], fix_policy=fix_policy)
            if layer == top:  # the output is h before its dropout
                outputs.append(new.h if active is None else torch.where(active, new.h, torch.zeros_like(new.h)))
            if masks.h[layer] is not None:
                new = new._replace(h=new.h * masks.h[layer])
            inp = new.h
            if active is not None:
                new = ALSTMCellState(*(torch.where(active, n, o) for n, o in zip(new, state[layer], strict=True)))
            state[layer] = new
    out = torch.stack(outputs, 0) if outputs else x.new_zeros(0, x.shape[1], module.output_size)
    return out, tuple(state)

