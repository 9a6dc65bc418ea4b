"""Models built from this library's layers: :class:`TransformerLM` with swappable FFNs."""

from .ffn import FFN_VARIANTS, build_ffn, matched_width, multiply_adds
from .ffn_adaptive import AdaptiveFFN
from .ffn_iat import IATFFN
from .ffn_mlp import MLPFFN
from .ffn_swiglu import SwiGLUFFN
from .transformer import Block, CausalSelfAttention, TransformerConfig, TransformerLM

__all__ = ["FFN_VARIANTS", "AdaptiveFFN", "Block", "CausalSelfAttention", "IATFFN", "MLPFFN", "SwiGLUFFN",
           "TransformerConfig", "TransformerLM", "build_ffn", "matched_width", "multiply_adds"]
