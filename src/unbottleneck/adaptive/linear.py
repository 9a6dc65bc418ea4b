"""AdaptiveLinear: a feed-forward layer whose weights adapt to the input.

A static layer ``phi(W x + b)`` adapts only through the activation's effect
``diag(phi(a) / a)``, which is close to constant where pre-activations cluster
(the activation function bottleneck).  An adaptive layer learns the adaptation
instead: diagonal matrices ``D = diag(pi(c))`` from a policy of a conditioning
input ``c`` (``x`` by default) scale rows and/or columns of the weights:

=========  =====================================  ======================
policy     map                                    policy output (order)
=========  =====================================  ======================
output     ``y = D_out W x + b``                  ``pi_out`` (m)
input      ``y = W D_in x + b``                   ``pi_in`` (n)
io         ``y = D_out W D_in x + b``             ``pi_in`` (n), ``pi_out`` (m)
sva        ``y = W2 D W1 x + b``                  ``pi_sv`` (k)
=========  =====================================  ======================

``adapt_bias=True`` appends ``pi_b`` (m) and uses ``D_b b`` as the bias (any policy).
With every policy output fixed to 1 the layer is the static linear map
(``W x + b``, or ``W2 W1 x + b`` for SVA): :meth:`linearized`.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import choice, matching_dtype, positive_int
from .policy import build_policy

POLICIES = ("output", "input", "io", "sva")
INITS = ("orthogonal", "torch")


class AdaptiveLinear(nn.Module):
    """Linear layer with input-dependent (adapted) weights.

    Args:
        in_features: n, size of each input sample.
        out_features: m, size of each output sample.
        policy: ``"output"``, ``"input"``, ``"io"`` or ``"sva"`` (see the module doc).
        rank: k, the SVA inner dimension (default ``min(n, m)``); SVA only.
        bias: learn an additive bias b.
        adapt_bias: scale the bias by a policy output ``pi_b`` as well.
        policy_net: ``"linear"`` (``P c + b``, the reference), ``"tanh"``
            (``1 + tanh(P c + b)``), ``"mlp"`` (``1 + MLP(c)``) or any module mapping
            ``(..., context_features) -> (..., policy_size)``.
        context_features: size of the conditioning input (default ``in_features``).
        policy_hidden: hidden width of the ``"mlp"`` policy.
        policy_init_scale: std (times ``1/sqrt(fan_in)``) of the policy's last
            weights at init; the built-in policies start at ``pi = 1`` plus this noise.
        policy_bias: ``False`` gives the seed's bias-free ``pi(c) = P c`` (``policy_net=
            "linear"`` only; ``P`` truncated normal with std ``1/sqrt(fan_in)``, so ``pi``
            starts near 0 rather than at the static map).
        init: ``"orthogonal"`` (reference: orthogonal W, or W1 and W2, zero bias) or
            ``"torch"`` (``nn.Linear``'s default).

    Shape:
        x: (..., in_features); context: (..., context_features), broadcastable
        against x's leading dims; output: (..., out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        policy: str = "sva",
        rank: int | None = None,
        bias: bool = True,
        adapt_bias: bool = False,
        policy_net: str | nn.Module = "linear",
        context_features: int | None = None,
        policy_hidden: int = 32,
        policy_init_scale: float = 0.1,
        policy_bias: bool = True,
        init: str = "orthogonal",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n = positive_int("in_features", in_features)
        m = positive_int("out_features", out_features)
        choice("policy", policy, POLICIES)
        choice("init", init, INITS)
        if rank is not None and policy != "sva":
            raise ValueError(f"rank is only used by policy='sva', got rank={rank!r} with {policy!r}")
        if adapt_bias and not bias:
            raise ValueError("adapt_bias=True needs bias=True")
        c = n if context_features is None else positive_int("context_features", context_features)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.context_features = n, m, c
        self.policy, self.adapt_bias, self.init = policy, adapt_bias, init

        if policy == "sva":
            k = min(n, m) if rank is None else positive_int("rank", rank)
            self.rank = k
            self.weight_in = nn.Parameter(torch.empty(k, n, **factory))  # W1
            self.weight_out = nn.Parameter(torch.empty(m, k, **factory))  # W2
            sizes = {"sv": k}
        else:
            self.rank = None
            self.weight = nn.Parameter(torch.empty(m, n, **factory))
            sizes = {"output": {"out": m}, "input": {"in": n}, "io": {"in": n, "out": m}}[policy]
        if adapt_bias:
            sizes = {**sizes, "bias": m}
        self.policy_sizes: dict[str, int] = dict(sizes)
        self.policy_size = sum(sizes.values())
        self.bias = nn.Parameter(torch.empty(m, **factory)) if bias else None
        self.policy_net = build_policy(
            policy_net, c, self.policy_size, hidden=policy_hidden,
            init_scale=policy_init_scale, bias=policy_bias, **factory,
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the static weights (the policy network keeps its own init)."""
        weights = [self.weight_in, self.weight_out] if self.policy == "sva" else [self.weight]
        for w in weights:
            if self.init == "orthogonal":
                nn.init.orthogonal_(w)
            else:
                nn.init.kaiming_uniform_(w, a=5**0.5)  # nn.Linear's default
        if self.bias is not None:
            if self.init == "orthogonal":
                self.bias.zero_()
            else:
                bound = 1 / weights[0].shape[1] ** 0.5
                nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def load_static(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Make :meth:`linearized` the map ``weight @ x + bias``: ``weight`` (m, n) is copied,
        or for SVA split through its SVD ``U S V^T`` as ``W2 = U S^1/2``, ``W1 = S^1/2 V^T``
        (exact when ``rank >= min(n, m)``, else the best rank-k approximation)."""
        if weight.shape != (self.out_features, self.in_features):
            raise ValueError(f"weight must have shape ({self.out_features}, {self.in_features}), "
                             f"got {tuple(weight.shape)}")
        if self.policy == "sva":
            U, S, Vh = torch.linalg.svd(weight.to(self.weight_in.dtype), full_matrices=False)
            r = min(self.rank, S.numel())
            root = S[:r].sqrt()
            self.weight_out.zero_()
            self.weight_in.zero_()
            self.weight_out[:, :r].copy_(U[:, :r] * root)
            self.weight_in[:r].copy_(root[:, None] * Vh[:r])
        else:
            self.weight.copy_(weight)
        if bias is not None:
            if self.bias is None:
                raise ValueError("this layer has no bias (bias=False)")
            self.bias.copy_(bias)

    # -- policy -----------------------------------------------------------------------
    def adaptation(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """Policy outputs for ``context`` (..., context_features), split by role.

        Keys among ``"in"`` (n), ``"out"`` (m), ``"sv"`` (k), ``"bias"`` (m).
        """
        self._check_input(context, self.context_features, "context")
        pi = self.policy_net(context)
        if pi.shape[-1] != self.policy_size:
            raise ValueError(
                f"policy_net returned last dimension {pi.shape[-1]}, expected "
                f"{self.policy_size} ({' + '.join(f'{k}={v}' for k, v in self.policy_sizes.items())})"
            )
        parts = torch.split(pi, list(self.policy_sizes.values()), dim=-1)
        return dict(zip(self.policy_sizes, parts, strict=True))

    def ones_adaptation(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Policy outputs fixed to 1: the layer becomes its static linear map."""
        return {k: x.new_ones(v) for k, v in self.policy_sizes.items()}

    # -- forward ----------------------------------------------------------------------
    def _check_input(self, t: torch.Tensor, size: int, name: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"AdaptiveLinear expects {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 0 or t.shape[-1] != size:
            raise ValueError(f"AdaptiveLinear expects {name} of shape (..., {size}), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"AdaptiveLinear expects a floating point {name}, got {t.dtype}")
        p = self.bias if self.bias is not None else next(self.parameters())
        if t.device != p.device:
            raise ValueError(f"AdaptiveLinear {name} on {t.device}, parameters on {p.device}")
        matching_dtype("AdaptiveLinear", name, t, p)

    def apply_adaptation(self, x: torch.Tensor, pi: dict[str, torch.Tensor]) -> torch.Tensor:
        """The layer's map with given policy outputs ``pi`` (as from :meth:`adaptation`)."""
        if self.policy == "sva":
            y = torch.nn.functional.linear(torch.nn.functional.linear(x, self.weight_in) * pi["sv"],
                                           self.weight_out)
        else:
            if "in" in pi:
                x = x * pi["in"]
            y = torch.nn.functional.linear(x, self.weight)
            if "out" in pi:
                y = y * pi["out"]
        if self.bias is not None:
            y = y + (self.bias * pi["bias"] if "bias" in pi else self.bias)
        return y

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(..., in_features) -> (..., out_features), adapted to ``context`` (default ``x``)."""
        self._check_input(x, self.in_features, "input")
        pi = self.adaptation(x if context is None else context)
        return self.apply_adaptation(x, pi)

    def linearized(self, x: torch.Tensor) -> torch.Tensor:
        """The static map (every policy output = 1): ``W x + b`` or ``W2 W1 x + b``."""
        self._check_input(x, self.in_features, "input")
        return self.apply_adaptation(x, self.ones_adaptation(x))

    def static_weight(self) -> torch.Tensor:
        """(out_features, in_features) weight of :meth:`linearized`."""
        return self.weight_out @ self.weight_in if self.policy == "sva" else self.weight

    def adapted_weight(self, context: torch.Tensor) -> torch.Tensor:
        """Per-sample effective weight, (..., out_features, in_features).

        ``forward(x, c) == adapted_weight(c) @ x + adapted bias`` (for inspection
        and tests; the forward never materialises it).
        """
        pi = self.adaptation(context)
        if self.policy == "sva":
            return (self.weight_out * pi["sv"].unsqueeze(-2)) @ self.weight_in
        w = self.weight
        if "in" in pi:
            w = w * pi["in"].unsqueeze(-2)
        if "out" in pi:
            w = w * pi["out"].unsqueeze(-1)
        return w  # (..., m, n): the policies' leading dims broadcast in

    def extra_repr(self) -> str:
        rank = f", rank={self.rank}" if self.rank is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"policy={self.policy}{rank}, bias={self.bias is not None}, adapt_bias={self.adapt_bias}"
        )
