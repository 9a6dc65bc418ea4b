"""Element-wise activation *functions* seen by the recorder (``F.gelu`` inside a forward).

:class:`FunctionalTap` is a ``TorchFunctionMode``: while it is active, every call of a
function in :data:`FUNCTIONAL_ACTIVATIONS` is passed to a callback with its input, its
output and a function that re-applies it with the same extra arguments, before the
result is returned unchanged.  The recorder uses it to measure models written with
functional calls, attributing each call to the module whose forward made it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

#: function -> the name records use.  Methods (``x.relu()``) and in-place forms count too.
FUNCTIONAL_ACTIVATIONS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", torch.Tensor.relu: "relu",
    F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.elu: "elu", F.selu: "selu", F.celu: "celu",
    F.gelu: "gelu", F.silu: "silu", F.mish: "mish", F.softplus: "softplus", F.softsign: "softsign",
    F.hardtanh: "hardtanh", F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish",
    F.logsigmoid: "logsigmoid", F.tanhshrink: "tanhshrink",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.Tensor.sigmoid: "sigmoid",
    torch.tanh: "tanh", F.tanh: "tanh", torch.Tensor.tanh: "tanh",
}

#: callback(name, input, output, reapply) with reapply(a) = the same call on ``a``
Callback = Callable[[str, torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], None]


class FunctionalTap(TorchFunctionMode):
    """Report element-wise activation calls to ``callback`` (the mode is off inside it)."""

    def __init__(self, callback: Callback) -> None:
        super().__init__()
        self.callback = callback

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = FUNCTIONAL_ACTIVATIONS.get(func)
        if name is None or not args or not isinstance(args[0], torch.Tensor) \
                or not args[0].is_floating_point():
            return func(*args, **kwargs)
        # A copy of the input: an in-place call (inplace=True) would overwrite it.
        a = args[0].detach().clone()
        out = func(*args, **kwargs)
        rest, kw = args[1:], {k: v for k, v in kwargs.items() if k != "inplace"}

        def reapply(x: torch.Tensor) -> torch.Tensor:
            return func(x, *rest, **kw)

        self.callback(name, a, out, reapply)
        return out
