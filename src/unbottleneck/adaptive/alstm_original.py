"""Compatibility with the published aLSTM code (``flennerhag/alstm``).

**How that code splits the policy.**  Its cell cuts the projection ``pi = tanh(Pi z)``
(width ``n + 13H``) into ``pi_x, pi_h, pi_u, pi_v, pi_b`` with a helper whose slice of
chunk ``i`` *starts at the size of chunk i-1* (the first at 0), not at the running
offset.  With sizes ``(n, H, 4H, 4H, 4H)`` it reads, as it runs:

====== ===================  ==========================
policy  documented slice     slice as the code runs
====== ===================  ==========================
pi_x    ``[0, n)``           ``[0, n)``
pi_h    ``[n, n+H)``         ``[n, n+H)``
pi_u    ``[n+H, n+5H)``      ``[H, 5H)``
pi_v    ``[n+5H, n+9H)``     ``[4H, 8H)``
pi_b    ``[n+9H, n+13H)``    ``[4H, 8H)`` (equal to pi_v)
====== ===================  ==========================

so ``pi_u`` overlaps ``pi_x``/``pi_h``/``pi_v``, ``pi_b`` is ``pi_v``, and rows beyond
``max(n + H, 8H)`` of ``Pi`` are never used.  The published perplexities (58.7 / 56.5
on PTB) come from this function.  ``ALSTM(..., policy_layout="original")`` computes it
exactly; the default ``"contiguous"`` is the split the code's docstrings (and the paper)
describe.

**State dicts.**  :func:`convert_original_state_dict` maps that code's ``aLSTM``
module naming (``adapt_layers.<l>.*``: the adaptation ``nn.LSTMCell``;
``project_layers.<l>.linear.weight``: ``Pi``; ``alstm_layers.<l>.weight_ih`` /
``weight_hh`` / ``bias``: ``W``, ``V``, ``b``) to :class:`~unbottleneck.adaptive.ALSTM`'s,
optionally under a prefix (its language model keeps the stack as ``rnns.``).
A one-layer original reads ``[x ; h]`` (no ``z`` of a layer below); the mapping
pads the adaptation weights with zero columns for the ``z`` input this library's
single layer has, which leaves the function unchanged.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

POLICY_LAYOUTS = ("contiguous", "original")


def policy_slices(n: int, H: int, layout: str) -> list[tuple[int, int]]:
    """``(start, length)`` of ``pi_x, pi_h, pi_u, pi_v, pi_b`` in a policy of width ``n + 13H``."""
    sizes = [n, H, 4 * H, 4 * H, 4 * H]
    if layout == "contiguous":
        starts = [sum(sizes[:i]) for i in range(5)]
    elif layout == "original":
        starts = [0] + sizes[:-1]  # the published helper: chunk i starts at size(i-1)
    else:
        raise ValueError(f"unknown policy_layout {layout!r}; choose one of {', '.join(POLICY_LAYOUTS)}")
    return list(zip(starts, sizes, strict=True))


def policy_index(n: int, H: int, layout: str, device: torch.device | None = None) -> Tensor:
    """Row indices into ``Pi`` that give the layout's policy as one contiguous vector (n + 13H,)."""
    return torch.cat([torch.arange(s, s + k, device=device) for s, k in policy_slices(n, H, layout)])


_PATTERN = re.compile(r"(?:(?P<prefix>.*)\.)?(?P<group>adapt_layers|project_layers|alstm_layers)\."
                      r"(?P<layer>\d+)\.(?P<rest>.+)")
_ADAPT = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def convert_original_state_dict(state_dict: dict[str, Tensor], num_layers: int | None = None,
                                prefix: str | None = None) -> dict[str, Tensor]:
    """Map an original-code aLSTM ``state_dict`` to this library's :class:`ALSTM` names.

    Args:
        state_dict: the original module's (or a model's holding it) state dict.
        num_layers: expected layer count (checked when given).
        prefix: the module's key prefix (e.g. ``"rnns"``); detected when None.  Keys
            outside the aLSTM are ignored.

    Returns:
        ``layers.<l>.adapt.*``, ``layers.<l>.policy.weight``, ``layers.<l>.weight_ih``,
        ``weight_hh``, ``bias`` for ``ALSTM(..., policy_layout="original").load_state_dict``.

    Raises:
        ValueError: no aLSTM keys, several prefixes, a missing or unexpected key, a
        bias-free original (``bias=False``, which this library does not build).
    """
    found: dict[tuple[str, int], dict[str, Tensor]] = {}
    prefixes = set()
    for key, value in state_dict.items():
        m = _PATTERN.fullmatch(key)
        if m is None:
            continue
        p = m.group("prefix") or ""
        if prefix is not None and p != prefix.rstrip("."):
            continue
        prefixes.add(p)
        found.setdefault((m.group("group"), int(m.group("layer"))), {})[m.group("rest")] = value
    if not found:
        raise ValueError("no original aLSTM keys (adapt_layers.* / project_layers.* / alstm_layers.*) "
                         "in the state dict" + (f" under prefix {prefix!r}" if prefix else ""))
    if len(prefixes) > 1:
        raise ValueError(f"aLSTM keys under several prefixes {sorted(prefixes)}; pass prefix=")
    layers = sorted({layer for _, layer in found})
    if layers != list(range(len(layers))):
        raise ValueError(f"layers must be numbered 0..L-1, found {layers}")
    if num_layers is not None and len(layers) != num_layers:
        raise ValueError(f"the state dict holds {len(layers)} layers, the ALSTM has {num_layers}")
    out: dict[str, Tensor] = {}
    for layer in layers:
        adapt = found.get(("adapt_layers", layer), {})
        proj = found.get(("project_layers", layer), {})
        cell = found.get(("alstm_layers", layer), {})
        need = {"adapt_layers": (adapt, _ADAPT), "project_layers": (proj, ("linear.weight",)),
                "alstm_layers": (cell, ("weight_ih", "weight_hh", "bias"))}
        for group, (got, names) in need.items():
            if set(got) != set(names):
                missing, extra = sorted(set(names) - set(got)), sorted(set(got) - set(names))
                hint = " (a bias-free original aLSTM is not supported)" if group == "alstm_layers" and \
                    "bias" in missing else ""
                raise ValueError(f"layer {layer} {group}: missing {missing}, unexpected {extra}{hint}")
        H, n = cell["weight_hh"].shape[1], cell["weight_ih"].shape[1]
        K = adapt["weight_hh"].shape[1]
        if proj["linear.weight"].shape != (n + 13 * H, K):
            raise ValueError(f"layer {layer}: projection shape {tuple(proj['linear.weight'].shape)}, "
                             f"expected {(n + 13 * H, K)}")
        w_ih = adapt["weight_ih"]
        if len(layers) == 1 and w_ih.shape[1] == n + H:  # one layer: no z input in the original
            w_ih = torch.cat([w_ih, w_ih.new_zeros(w_ih.shape[0], K)], dim=1)
        base = f"layers.{layer}."
        out.update({base + "adapt.weight_ih": w_ih, base + "adapt.weight_hh": adapt["weight_hh"],
                    base + "adapt.bias_ih": adapt["bias_ih"], base + "adapt.bias_hh": adapt["bias_hh"],
                    base + "policy.weight": proj["linear.weight"], base + "weight_ih": cell["weight_ih"],
                    base + "weight_hh": cell["weight_hh"], base + "bias": cell["bias"]})
    return out
