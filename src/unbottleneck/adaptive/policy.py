"""Adaptation policies: maps from a conditioning input c to adaptation vectors pi(c).

An adaptive layer multiplies parts of a static linear map element-wise by
``pi(c)`` (arXiv 1805.08574).  The policy is the only place the layer's
non-linearity comes from (besides any activation after it), so its form is a
design choice exposed to the user:

* ``"linear"``: ``pi(c) = P c + b``.  ``P`` starts small
  (``N(0, init_scale^2 / fan_in)``) and ``b = 1``, so the layer starts close
  to its static map and learns how far to move from it.  With no activation
  after it the layer is then bilinear in ``x`` and ``c``.
* ``"linear"`` with ``bias=False``: the seed's ``pi(c) = P c`` exactly, no bias,
  ``P`` drawn as the TensorFlow starter draws weights (truncated normal, std
  ``1/sqrt(fan_in)``, cut at two std).  ``pi`` then starts near 0, not at 1: the
  layer does not start at its static map.
* ``"tanh"``: ``pi(c) = 1 + tanh(P c + b)`` with ``b = 0``: bounded in (0, 2) and
  equal to 1 at init, for training that must not blow up the weights.
* ``"mlp"``: ``pi(c) = 1 + L2(tanh(L1 c))``, a one-hidden-layer MLP whose last
  layer starts small, again starting at the static map.
* any ``nn.Module`` mapping ``(..., context_features) -> (..., size)``: used as is.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POLICY_NETS = ("linear", "tanh", "mlp")


class LinearPolicy(nn.Module):
    """``pi(c) = P c + b`` (``bounded=False``) or ``1 + tanh(P c + b)`` (``bounded=True``).

    ``bias=False`` (unbounded only) is the seed's ``pi(c) = P c`` with ``P`` ~ truncated
    normal, std ``1/sqrt(fan_in)`` (``init_scale`` is then not used).

    Shape: (..., context_features) -> (..., size)
    """

    def __init__(
        self,
        context_features: int,
        size: int,
        bounded: bool = False,
        init_scale: float = 0.1,
        bias: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if bounded and not bias:
            raise ValueError("policy_bias=False is only defined for the unbounded linear policy "
                             "(pi = P c); the tanh policy needs its bias")
        self.proj = nn.Linear(context_features, size, bias=bias, device=device, dtype=dtype)
        self.bounded = bounded
        self.init_scale = init_scale
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        fan_in = self.proj.in_features
        std = 1.0 / math.sqrt(fan_in)
        if self.proj.bias is None:  # the seed's pi = P c: starter-code truncated normal
            nn.init.trunc_normal_(self.proj.weight, std=std, a=-2.0 * std, b=2.0 * std)
            return
        nn.init.normal_(self.proj.weight, std=self.init_scale * std)
        # Start at pi = 1 (the static layer) in both forms.
        self.proj.bias.fill_(0.0 if self.bounded else 1.0)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        u = self.proj(c)
        return 1.0 + torch.tanh(u) if self.bounded else u

    def extra_repr(self) -> str:
        return f"bounded={self.bounded}, bias={self.proj.bias is not None}"


class MLPPolicy(nn.Module):
    """``pi(c) = 1 + L2(tanh(L1 c))``; ``L2`` starts small so ``pi`` starts near 1.

    Shape: (..., context_features) -> (..., size)
    """

    def __init__(
        self,
        context_features: int,
        size: int,
        hidden: int = 32,
        init_scale: float = 0.1,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(context_features, hidden, device=device, dtype=dtype)
        self.out = nn.Linear(hidden, size, device=device, dtype=dtype)
        self.init_scale = init_scale
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.hidden.reset_parameters()
        nn.init.normal_(self.out.weight, std=self.init_scale / math.sqrt(self.out.in_features))
        self.out.bias.zero_()

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return 1.0 + self.out(torch.tanh(self.hidden(c)))


def build_policy(
    policy_net: str | nn.Module,
    context_features: int,
    size: int,
    hidden: int = 32,
    init_scale: float = 0.1,
    bias: bool = True,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Policy module by name (``"linear"``, ``"tanh"``, ``"mlp"``) or a user module.

    ``bias=False`` is accepted only with ``"linear"`` (the seed's ``pi = P c``).
    """
    if not bias and policy_net != "linear":
        raise ValueError(f"policy_bias=False needs policy_net='linear' (the seed's pi = P c), "
                         f"got {policy_net!r}")
    if isinstance(policy_net, nn.Module):
        return policy_net
    if not isinstance(policy_net, str):
        raise TypeError(
            f"policy_net must be one of {', '.join(POLICY_NETS)} or an nn.Module, "
            f"got {type(policy_net).__name__}"
        )
    factory = {"device": device, "dtype": dtype}
    if policy_net == "linear":
        return LinearPolicy(context_features, size, bounded=False, init_scale=init_scale, bias=bias,
                            **factory)
    if policy_net == "tanh":
        return LinearPolicy(context_features, size, bounded=True, init_scale=init_scale, **factory)
    if policy_net == "mlp":
        return MLPPolicy(context_features, size, hidden=hidden, init_scale=init_scale, **factory)
    raise ValueError(
        f"unknown policy_net {policy_net!r}; choose one of {', '.join(POLICY_NETS)} or pass an nn.Module"
    )
