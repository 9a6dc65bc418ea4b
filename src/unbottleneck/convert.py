"""Helpers that retrofit existing models with this library's layers.

* :func:`make_adaptive` replaces chosen ``nn.Linear`` layers by
  :class:`~unbottleneck.AdaptiveLinear`, keeping the static map (so the converted
  model starts where the original was, up to the policies' small init noise).
* :func:`swap_activations` replaces element-wise activation modules (ReLU by
  default) by IAT-ReLU; the feature size of each is read from one forward pass
  on an example input.

Both edit the model in place and return it, plus the list of converted names;
everything not converted is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .adaptive import AdaptiveLinear
from .iat import IAT

Selector = Iterable[str] | Callable[[str, nn.Module], bool] | None


def _selected(name: str, module: nn.Module, include: Selector) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(name, module))
    return name in include


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_names(model: nn.Module, include: Selector) -> None:
    if include is None or callable(include):
        return
    if isinstance(include, str):
        raise TypeError("include must be a list of module names or a predicate, not a str")
    names = dict(model.named_modules())
    missing = [n for n in include if n not in names]
    if missing:
        raise ValueError(f"no submodule named {', '.join(map(repr, missing))} in the model")


@torch.no_grad()
def make_adaptive(
    model: nn.Module,
    policy: str = "sva",
    include: Selector = None,
    copy_weights: bool = True,
    **kwargs: Any,
) -> tuple[nn.Module, list[str]]:
    """Replace ``nn.Linear`` layers of ``model`` by :class:`AdaptiveLinear`.

    Args:
        model: any module; edited in place.
        policy: adaptation policy of the new layers.
        include: names (as in ``model.named_modules()``) or a predicate
            ``(name, module) -> bool`` choosing which Linear layers convert
            (default: all).
        copy_weights: give each new layer the old layer's static map: ``W`` and
            ``b`` copied; for SVA, ``W = U S V^T`` split as ``W2 = U S^1/2``,
            ``W1 = S^1/2 V^T`` (exact when ``rank = min(n, m)``).
        **kwargs: forwarded to :class:`AdaptiveLinear` (``rank``, ``policy_net``, ...).

    Returns:
        (model, names of the converted layers)
    """
    _check_names(model, include)
    targets = [
        (name, mod) for name, mod in model.named_modules()
        if type(mod) is nn.Linear and name and _selected(name, mod, include)
    ]
    if not callable(include) and include is not None:
        not_linear = [n for n in include if type(model.get_submodule(n)) is not nn.Linear]
        if not_linear:
            raise ValueError(f"not nn.Linear layers: {', '.join(map(repr, not_linear))}")
    for name, lin in targets:
        w = lin.weight
        new = AdaptiveLinear(
            lin.in_features, lin.out_features, policy=policy, bias=lin.bias is not None,
            device=w.device, dtype=w.dtype, **kwargs,
        )
        if copy_weights:
            new.load_static(w, lin.bias)
        new.train(lin.training)
        _set_submodule(model, name, new)
    return model, [name for name, _ in targets]


DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU,)


#: Modules whose output holds its features in the last dimension (``nn.Linear`` style).
_LAST_DIM = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.RMSNorm, nn.Embedding)
#: Modules whose output holds its features (channels) in dimension 1 (N, C, ...).
_CHANNEL_DIM = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                nn.modules.instancenorm._InstanceNorm)


def _features_of(module: nn.Module, out: torch.Tensor) -> tuple[int, int] | None:
    """(dim, size) of the features in ``module``'s output, for the producers we can identify."""
    if isinstance(module, _CHANNEL_DIM) and not (isinstance(module, nn.BatchNorm1d) and out.dim() == 2):
        return (1, out.shape[1]) if out.dim() >= 2 else None
    if isinstance(module, (*_LAST_DIM, nn.BatchNorm1d)):
        return (-1, out.shape[-1]) if out.dim() >= 1 else None
    return None


def _feature_dim(name: str, shape: torch.Size, producer: tuple[str, int, int] | None) -> int:
    """The dimension of an activation's input that holds the features, or a clear refusal."""
    if len(shape) <= 2:  # (d,) or (N, d): only one candidate
        return -1
    if producer is not None:
        source, dim, size = producer
        if shape[dim] == size:
            return dim
        why = f"its input {tuple(shape)} does not carry the {size} features of {source!r} at dim {dim}"
    else:
        why = f"no layer before it that fixes the feature dimension (input {tuple(shape)})"
    raise ValueError(f"swap_activations cannot tell which dimension of {name!r}'s input holds the features: "
                     f"{why}; leave it out with include=, or replace it by IAT(d, dim=...) yourself")


@torch.no_grad()
def swap_activations(
    model: nn.Module,
    example_input: Any,
    activations: tuple[type[nn.Module], ...] = DEFAULT_ACTIVATIONS,
    include: Selector = None,
    **iat_kwargs: Any,
) -> tuple[nn.Module, list[str]]:
    """Replace activation modules by IAT-ReLU (or any IAT given ``iat_kwargs``).

    An IAT needs its feature size d and the dimension that holds it, which an
    ``nn.ReLU`` does not know: one forward pass of ``example_input`` (a tensor, or
    a tuple of positional arguments) records, for each activation, its input shape
    and the last layer before it whose output layout is known: ``nn.Linear``,
    ``LayerNorm``, ``Embedding`` (features last: ``dim=-1``) or a convolution,
    batch / group / instance norm (channels first: ``dim=1``).  A 1-D or 2-D input
    has only one candidate.  Anything else (e.g. a 3-D input after an unknown
    layer, or a size that does not match that layer's) is refused with a
    ``ValueError`` rather than guessed.  Activations the pass never reaches are
    left unchanged.  Only module activations can be swapped (``F.relu`` calls
    inside ``forward`` are invisible).

    Args:
        model: any module; edited in place.
        example_input: input for one forward pass (run in eval mode, no grad).
        activations: module types to replace.
        include: names or predicate restricting the replacement (default: all).
        **iat_kwargs: forwarded to :class:`IAT` (``basis``, ``num_points``, ...).

    Returns:
        (model, names of the swapped modules)
    """
    _check_names(model, include)
    seen: dict[str, tuple[torch.Size, tuple[str, int, int] | None]] = {}
    last: list[tuple[str, int, int] | None] = [None]  # the latest identified producer
    handles = []
    for name, mod in model.named_modules():
        if name and isinstance(mod, activations) and _selected(name, mod, include):
            def pre(module: nn.Module, args: tuple, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0:
                    seen.setdefault(name, (args[0].shape, last[0]))
            handles.append(mod.register_forward_pre_hook(pre))
        elif isinstance(mod, (*_LAST_DIM, *_CHANNEL_DIM)):
            def post(module: nn.Module, args: tuple, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    found = _features_of(module, out)
                    last[0] = None if found is None else (name, *found)
            handles.append(mod.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        model(*inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    dims = {name: _feature_dim(name, shape, producer) for name, (shape, producer) in seen.items()}
    ref = next(iter(model.parameters()), None)
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    for name, dim in dims.items():
        new = IAT(seen[name][0][dim], **{**factory, "dim": dim, **iat_kwargs})
        _set_submodule(model, name, new)
    return model, list(dims)
