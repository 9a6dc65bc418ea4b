"""The precision policy of the custom autograd functions under ``torch.autocast``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def own_precision(fn: F) -> F:
    """Run a custom autograd Function's ``forward`` or ``backward`` with autocast off.

    The hand-written kernels compute in the dtype of the tensors they are given (the
    modules cast to their own dtype first), so an autocast region must not re-cast their
    matmuls behind their back; and backward, which autograd runs under whatever autocast
    state is active at ``.backward()``, must see the same state as forward.  This is what
    ``torch.amp.custom_fwd/custom_bwd`` do for one device type; here it applies to the
    device of the first tensor argument, CPU or CUDA alike.
    """

    @functools.wraps(fn)
    def wrapper(ctx: Any, *args: Any) -> Any:
        device = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        if not torch.amp.is_autocast_available(device):
            return fn(ctx, *args)
        with torch.autocast(device, enabled=False):
            return fn(ctx, *args)

    return wrapper  # type: ignore[return-value]
