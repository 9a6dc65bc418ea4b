"""``TransformerLM``: a small decoder-only, pre-LayerNorm transformer with swappable FFNs.

Design choices (documented options where the issue leaves them open):

* **positions**: learned absolute embeddings (``max_len`` of them) -- the simplest scheme
  that traces, compiles and exports without custom ops; the FFN is what is compared.
* **attention**: causal ``F.scaled_dot_product_attention`` over ``n_heads`` heads, one
  fused ``qkv`` projection and an output projection (``nn.Linear`` both, so
  :func:`~unbottleneck.make_adaptive` can reach them if asked).
* **decoder**: tied to the token embedding by default, applied as ``F.linear`` (not an
  ``nn.Linear`` module), so converting "every Linear" never unties it.
* **init**: GPT-2 style, ``N(0, 0.02)`` for Linear and Embedding weights, the residual
  projections (attention ``out`` and FFN ``down``) scaled by ``1 / sqrt(2 n_layers)``;
  an adaptive FFN's first projection starts as the static map of such a Linear (SVD split
  for SVA), policies at 1, so every variant starts from the same distribution.
* **FFN width**: ``d_ff`` is the *reference* width of the ``mlp`` block (default
  ``4 d_model``); each variant gets the width whose block matches the reference block's
  parameter count (``match="params"``, default) or multiply-adds per token
  (``match="flops"``), see :mod:`.ffn`; ``match="none"`` uses ``d_ff`` as is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import positive_int
from ..adaptive import AdaptiveLinear
from .ffn import FFN_VARIANTS, MATCH_MODES, build_ffn, matched_width, multiply_adds


@dataclass
class TransformerConfig:
    """Everything that defines a :class:`TransformerLM` (its ``config`` attribute)."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int | None = None  # reference (mlp) width; None: 4 d_model
    ffn: str = "mlp"
    max_len: int = 256
    dropout: float = 0.0
    tie_weights: bool = True
    match: str = "params"
    ffn_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_len"):
            positive_int(name, getattr(self, name))
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.ffn not in FFN_VARIANTS:
            raise ValueError(f"unknown ffn {self.ffn!r}; choose one of {', '.join(FFN_VARIANTS)}")
        if self.match not in MATCH_MODES:
            raise ValueError(f"unknown match {self.match!r}; choose one of {', '.join(MATCH_MODES)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def ffn_width(self) -> int:
        """The hidden width this variant's FFN gets (see :func:`.ffn.matched_width`)."""
        return matched_width(self.ffn, self.d_model, self.d_ff, self.match, **self.ffn_options)


class CausalSelfAttention(nn.Module):
    """(B, T, d) -> (B, T, d): multi-head attention, each position sees itself and the past."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, **factory)
        self.out = nn.Linear(d_model, d_model, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    """Pre-LN residual block: ``x + attn(ln1(x))``, then ``x + ffn(ln2(x))``."""

    def __init__(self, cfg: TransformerConfig, ffn_width: int, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.ln1 = nn.LayerNorm(cfg.d_model, **factory)
        self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout, **factory)
        self.ln2 = nn.LayerNorm(cfg.d_model, **factory)
        self.ffn = build_ffn(cfg.ffn, cfg.d_model, ffn_width, **factory, **cfg.ffn_options)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ffn(self.ln2(x)))


class TransformerLM(nn.Module):
    """Decoder-only language model: tokens (B, T) int64 -> logits (B, T, vocab_size).

    Args:
        vocab_size, d_model, n_layers, n_heads: the usual sizes.
        d_ff: the reference FFN width (the ``mlp`` block's; default ``4 d_model``).
        ffn: ``"mlp"``, ``"swiglu"``, ``"iat"`` or ``"adaptive"``.
        max_len: longest sequence (learned position embeddings).
        dropout: on attention weights and both residual branches.
        tie_weights: decoder = token embedding (transposed).
        match: ``"params"`` (default), ``"flops"`` or ``"none"``: how the variant's own
            hidden width (``ffn_width``) is derived from ``d_ff``.
        check_tokens: refuse out-of-range token ids with a clear error (one host sync per
            forward; off for speed once the data is known to be valid).
        **ffn_options: forwarded to the FFN (``iat``: IAT options such as ``basis``;
            ``adaptive``: ``policy`` and AdaptiveLinear options).
    """

    def __init__(self, vocab_size: int, d_model: int = 128, n_layers: int = 4, n_heads: int = 4,
                 d_ff: int | None = None, ffn: str = "mlp", max_len: int = 256, dropout: float = 0.0,
                 tie_weights: bool = True, match: str = "params", check_tokens: bool = True,
                 device=None, dtype=None, **ffn_options: Any) -> None:
        super().__init__()
        cfg = TransformerConfig(vocab_size, d_model, n_layers, n_heads, d_ff, ffn, max_len, dropout,
                                tie_weights, match, dict(ffn_options))
        self.config, self.ffn_width, self.check_tokens = cfg, cfg.ffn_width, check_tokens
        factory = {"device": device, "dtype": dtype}
        self.tok = nn.Embedding(vocab_size, d_model, **factory)
        self.pos = nn.Embedding(max_len, d_model, **factory)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(cfg, self.ffn_width, **factory) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, **factory)
        self.head = None if tie_weights else nn.Linear(d_model, vocab_size, bias=False, **factory)
        self._init_weights()  # the submodules were just initialised by their constructors

    @classmethod
    def from_config(cls, cfg: TransformerConfig, **kwargs: Any) -> TransformerLM:
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "ffn_options"}
        return cls(**fields, **kwargs, **cfg.ffn_options)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every submodule's own init (LayerNorm, IAT bases, policies, ...), then the GPT-2
        style init of the Linear, Embedding and adaptive layers.  After meta-device init and
        ``to_empty()`` this makes every tensor real."""
        if any(p.is_meta for p in self.parameters()):
            return  # meta-device init: to_empty() then reset_parameters()
        for mod in self.modules():
            if mod is not self and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        if any(p.is_meta for p in self.parameters()):
            return
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, mod in self.named_modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                is_residual = name.endswith(("attn.out", "ffn.down"))
                nn.init.normal_(mod.weight, std=residual_std if is_residual else 0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, AdaptiveLinear):
                w = torch.randn(mod.out_features, mod.in_features, dtype=torch.float64) * 0.02
                mod.load_static(w.to(next(mod.parameters()).device), torch.zeros(mod.out_features))

    # -- accounting --------------------------------------------------------------------
    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.pos.weight.numel() + (self.tok.weight.numel() if self.head is None else 0)
        return n

    def ffn_parameters(self) -> int:
        """Parameters of all FFN blocks together (what the variants are matched on)."""
        return sum(p.numel() for b in self.blocks for p in b.ffn.parameters())

    def multiply_adds_per_token(self, seq_len: int | None = None) -> int:
        """Forward multiply-adds per token at sequence length ``seq_len`` (default
        ``max_len``): projections, FFNs (:func:`.ffn.multiply_adds`), attention scores and
        values over the full (T, T) matrix as computed, and the decoder."""
        T = self.config.max_len if seq_len is None else seq_len
        d = self.config.d_model
        per_layer = [multiply_adds(b.attn) + 2 * T * d + multiply_adds(b.ffn) for b in self.blocks]
        return sum(per_layer) + d * self.config.vocab_size

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        """FLOPs per token: 2 per multiply-add of :meth:`multiply_adds_per_token`, times 3
        for a training step (forward + backward, the usual estimate)."""
        return 2 * self.multiply_adds_per_token(seq_len) * (3 if training else 1)

    # -- forward -----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"TransformerLM expects integer token ids, got "
                            f"{getattr(tokens, 'dtype', type(tokens).__name__)}")
        if tokens.dim() != 2:
            raise ValueError(f"TransformerLM expects tokens of shape (batch, seq_len), got {tuple(tokens.shape)}")
        T = tokens.shape[1]
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len={self.config.max_len}")
        if self.check_tokens and not torch.compiler.is_compiling() and tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got [{lo}, {hi}]")
        x = self.drop(self.tok(tokens) + self.pos(torch.arange(T, device=tokens.device)))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        return F.linear(x, self.tok.weight) if self.head is None else self.head(x)
