"""GDNN: the discretised continuous-width network, Linear -> IAT -> ... -> Linear."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validate import matching_dtype, positive_int
from .analysis import iat_gain
from .module import IAT

INITS = ("iat_gain", "torch")


class GDNN(nn.Module):
    """``depth`` IAT layers between ``depth + 1`` linear layers.

    ``in_features -> hidden -> IAT -> hidden -> IAT -> ... -> out_features``.  With
    finite-rank kernels a generalised (continuous-width) DNN is exactly this
    network; after discretisation it is a width-M ReLU network whose hidden
    weights ``P A Q^T diag(w)`` have rank at most ``hidden_features``.

    Initialisation (``init="iat_gain"``, the default): every linear layer that
    follows an IAT draws ``W ~ N(0, g^2 / fan_in)`` with ``g = iat_gain(IAT)``,
    the factor that makes ``E||Linear(IAT(z))||^2 = E||z||^2`` for isotropic
    Gaussian ``z``; the first layer uses ``g = 1`` and biases start at zero.  This
    is He initialisation with ReLU's sqrt(2) replaced by the IAT's own gain (and
    reduces to it exactly for the rectangular basis), so activation scale stays
    flat with depth.  ``init="torch"`` keeps PyTorch's default ``nn.Linear`` init.

    Args:
        in_features, hidden_features, out_features: layer sizes (hidden = d).
        depth: number of IAT layers (>= 1).
        bias: use biases in the linear layers.
        init: ``"iat_gain"`` or ``"torch"``.
        **iat_kwargs: forwarded to :class:`IAT` (``basis``, ``num_points``, ``q``, ...).

    Shape:
        (..., in_features) -> (..., out_features)
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        depth: int = 2,
        bias: bool = True,
        init: str = "iat_gain",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
        **iat_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden_features", hidden_features),
                            ("out_features", out_features), ("depth", depth)):
            positive_int(name, value)
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if "out_features" in iat_kwargs:
            raise ValueError("GDNN's IAT layers are square; choose q among 'dual', 'same', 'normalized'")
        factory = {"device": device, "dtype": dtype}
        self.depth = depth
        self.linears = nn.ModuleList(
            [nn.Linear(in_features, hidden_features, bias=bias, **factory)]
            + [nn.Linear(hidden_features, hidden_features, bias=bias, **factory) for _ in range(depth - 1)]
            + [nn.Linear(hidden_features, out_features, bias=bias, **factory)]
        )
        self.activations = nn.ModuleList(
            [IAT(hidden_features, **iat_kwargs, **factory) for _ in range(depth)]
        )
        self.init = init
        if init == "iat_gain":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw the linear layers with the IAT-gain initialisation (a no-op on the meta
        device: the weights are then set by ``to_empty`` + ``load_state_dict`` or a later call)."""
        if any(act.P.is_meta for act in self.activations):
            return
        gains = [1.0] + [iat_gain(act) for act in self.activations]
        for gain, lin in zip(gains, self.linears, strict=False):
            lin.weight.normal_(0.0, gain / lin.in_features**0.5)
            if lin.bias is not None:
                lin.bias.zero_()

    def resample(self, hidden_features: int, num_points: int | None = None,
                 fine_points: int | None = None) -> GDNN:
        """Re-discretise at another width through the continuous state functions.

        Every layer's weight functions (first layer ``A^T p(s)``, hidden kernels
        ``p(s')^T W q(s)``, output weights ``W q(s)``) are projected in L2 onto the bases
        with ``hidden_features`` functions; M keeps its ratio to the width unless
        ``num_points`` is given.  See :mod:`unbottleneck.iat.resample` for the formulas.

        Returns:
            a new GDNN (this one is unchanged).
        """
        from .resample import resample_gdnn

        return resample_gdnn(self, hidden_features, num_points, fine_points)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        first = self.linears[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"GDNN expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[-1] != first.in_features:
            raise ValueError(f"GDNN expects input of shape (..., {first.in_features}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"GDNN expects a floating point input, got {x.dtype}")
        matching_dtype("GDNN", "input", x, first.weight)
        h = first(x)
        for act, lin in zip(self.activations, self.linears[1:], strict=False):
            h = lin(act(h))
        return h
