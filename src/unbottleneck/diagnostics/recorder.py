"""Forward hooks that measure the activation function bottleneck on any ``nn.Module``.

:class:`BottleneckRecorder` attaches to a model and, on every forward pass,
records for each element-wise activation module (``nn.Sigmoid``, ``nn.Tanh``,
``nn.ReLU``, ``nn.GELU``, ...):

* its pre-activations ``a`` (the module's input), and
* the activation effect ``phi(a) - (phi'(0) a + phi(0))`` (see :mod:`.effect`);

the same for element-wise activation *functions* called inside a forward (``F.gelu``,
``torch.sigmoid``, ``x.relu()``, ...; :mod:`.functional`), each recorded under the name of
the module whose forward called it plus the function's name (``"blocks.0.ffn:silu"``;
``"#2"``, ``"#3"`` for further calls of the same function by the same module in one
pass), except calls made inside a module that is itself recorded (``nn.GELU`` calling
``F.gelu``, an IAT's own ReLU);

for each :class:`~unbottleneck.IAT` (kind ``"iat"``) its input and the *transform
effect* ``IAT(z) - L(z)``, where ``L`` is the same transform with ``sigma`` replaced by
its linearisation (for ReLU with ``kink="mean"``: ``z / 2`` for the dual output basis);

and for each :class:`~unbottleneck.AdaptiveLinear` layer the *adaptation effect*:
the layer's output (after the activation that consumes it, if any) minus the
same computation with every non-linear component removed, i.e. policies fixed
to 1 and ``phi`` replaced by its linearisation.  For an SVA layer followed by a
sigmoid this is ``sigmoid(W2 D W1 x + b) - (0.25 (W2 W1 x + b) + 0.5)``, the
seed's comparison; for an adaptive layer with no activation after it, it is
``y - y_static``.  The activation that follows an adaptive layer is found by
tensor identity: the module whose input *is* the layer's output tensor.

Samples are kept with a bottom-k sketch (uniform random keys from a seeded
generator, the ``max_samples`` smallest kept), so memory is bounded and the
retained values are a uniform sample of everything seen, reproducibly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validate import choice, positive_int
from ..adaptive import AdaptiveLinear
from ..iat import IAT
from ..iat.functional import iat_reference
from .effect import KINK_MODES, Linearization, linearize, summarize
from .functional import FunctionalTap

#: Element-wise activation modules recorded by default.
DEFAULT_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish,
    nn.LogSigmoid, nn.Tanhshrink,
)


@dataclass
class LayerRecord:
    """Samples recorded for one layer.

    ``kind`` is ``"activation"`` (an element-wise activation module, or function with
    ``activation`` its name), ``"iat"`` (an IAT module) or ``"adaptive"`` (an
    AdaptiveLinear layer, with ``activation`` naming the module that consumed its output, or
    ``None``).  ``preactivation`` and ``effect`` are aligned 1-D float64 samples.
    """

    name: str
    kind: str
    activation: str | None
    linearization: Linearization | None
    seen: int = 0
    preactivation: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    effect: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64))
    _keys: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.float64), repr=False)

    def add(self, pre: torch.Tensor, eff: torch.Tensor, gen: torch.Generator, cap: int) -> None:
        pre = pre.detach().reshape(-1).to("cpu", torch.float64)
        eff = eff.detach().reshape(-1).to("cpu", torch.float64)
        self.seen += pre.numel()
        keys = torch.rand(pre.numel(), generator=gen, dtype=torch.float64)
        if self._keys.numel() + keys.numel() > cap:
            keys_all = torch.cat([self._keys, keys])
            keep = torch.topk(keys_all, cap, largest=False, sorted=False).indices
            self._keys = keys_all[keep]
            self.preactivation = torch.cat([self.preactivation, pre])[keep]
            self.effect = torch.cat([self.effect, eff])[keep]
        else:
            self._keys = torch.cat([self._keys, keys])
            self.preactivation = torch.cat([self.preactivation, pre])
            self.effect = torch.cat([self.effect, eff])


def _activation_name(module: nn.Module) -> str:
    return type(module).__name__


class BottleneckRecorder:
    """Record pre-activations and activation / adaptation effects of a model.

    Use as a context manager (hooks are removed on exit)::

        with BottleneckRecorder(model) as rec:
            model(x)
        rec.summary()          # {layer name: {"preactivation": stats, "effect": stats, ...}}
        rec.records["1"].effect  # the (sub)sampled effects of module "1"

    Args:
        model: any module.
        activations: activation module types to record (default :data:`DEFAULT_ACTIVATIONS`);
            they must act element-wise.
        include: optional names (as in ``model.named_modules()``) restricting which
            activation / adaptive modules are recorded.
        adaptive: also record the adaptation effect of :class:`AdaptiveLinear` layers.
        functional: also record element-wise activation functions called inside the
            model's forward (a ``TorchFunctionMode`` while attached; attach and detach
            it in the same order as other modes).
        iat: also record :class:`~unbottleneck.IAT` modules' transform effect.
        max_samples: values kept per layer (uniform subsample beyond that).
        kink: linearisation at a kink, see :func:`~unbottleneck.diagnostics.linearize`.
        seed: seed of the subsampling generator.
    """

    def __init__(
        self,
        model: nn.Module,
        activations: Iterable[type[nn.Module]] = DEFAULT_ACTIVATIONS,
        include: Iterable[str] | None = None,
        adaptive: bool = True,
        functional: bool = True,
        iat: bool = True,
        max_samples: int = 1_000_000,
        kink: str = "mean",
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"BottleneckRecorder expects an nn.Module, got {type(model).__name__}")
        positive_int("max_samples", max_samples)
        self.model = model
        self.activation_types = tuple(activations)
        for t in self.activation_types:
            if not (isinstance(t, type) and issubclass(t, nn.Module)):
                raise TypeError(f"activations must be nn.Module subclasses, got {t!r}")
        names = dict(model.named_modules())
        self.include = None if include is None else set(include)
        if self.include is not None:
            missing = sorted(self.include - set(names))
            if missing:
                raise ValueError(f"no submodule named {', '.join(map(repr, missing))} in the model")
        self.adaptive, self.functional, self.iat = adaptive, functional, iat
        self.max_samples = max_samples
        self.kink = choice("kink mode", kink, KINK_MODES)
        self._gen = torch.Generator().manual_seed(seed)
        self.records: dict[str, LayerRecord] = {}
        self._linearizations: dict[str, Linearization] = {}
        self._pending: dict[int, tuple[str, torch.Tensor, torch.Tensor]] = {}
        self._handles: list[Any] = []
        self._tap: FunctionalTap | None = None
        self._stack: list[str] = []  # names of the modules whose forward is running
        self._calls: dict[str, int] = {}  # functional calls per name in this forward
        self._busy = False  # inside the recorder's own hooks: their calls are not the model's
        self._targets = [
            (name, mod) for name, mod in model.named_modules()
            if (self.include is None or name in self.include)
            and (isinstance(mod, self.activation_types) or (adaptive and isinstance(mod, AdaptiveLinear))
                 or (iat and isinstance(mod, IAT)))
        ]
        self._recorded_modules = {name for name, _ in self._targets}
        if not self._targets and not functional:
            raise ValueError(
                "the model has no module to record: no activation of the types "
                f"{', '.join(t.__name__ for t in self.activation_types)}"
                + (" and no AdaptiveLinear" if adaptive else "")
                + (" or IAT" if iat else "")
                + (" among the included names" if self.include is not None else "")
                + " (functional=True also records functions such as F.relu called inside forward)"
            )

    # -- lifecycle -------------------------------------------------------------------------
    def attach(self) -> BottleneckRecorder:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        if self.functional:
            for name, mod in self.model.named_modules():
                self._handles.append(mod.register_forward_pre_hook(self._enter(name)))
                self._handles.append(mod.register_forward_hook(self._leave, always_call=True))
        for name, mod in self._targets:
            if isinstance(mod, AdaptiveLinear):
                self._handles.append(mod.register_forward_hook(self._adaptive_hook(name), with_kwargs=True))
            elif isinstance(mod, IAT):
                self._handles.append(mod.register_forward_hook(self._iat_hook(name)))
            else:
                self._handles.append(mod.register_forward_pre_hook(self._activation_hook(name)))
        # After the whole forward: adaptive outputs no activation consumed are scored as is.
        self._handles.append(self.model.register_forward_hook(self._flush))
        if self.functional:
            self._tap = FunctionalTap(self._functional_call)
            self._tap.__enter__()
        return self

    def detach(self) -> None:
        """Remove the hooks (records are kept)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._pending.clear()
        self._stack.clear()
        if self._tap is not None:
            tap, self._tap = self._tap, None
            tap.__exit__(None, None, None)

    def reset(self) -> None:
        """Forget every recorded sample."""
        self.records.clear()
        self._pending.clear()

    def __enter__(self) -> BottleneckRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- hooks -----------------------------------------------------------------------------
    def _record(self, name: str, kind: str, activation: str | None, lin: Linearization | None,
                pre: torch.Tensor, eff: torch.Tensor) -> None:
        rec = self.records.get(name)
        if rec is None:
            rec = self.records[name] = LayerRecord(name, kind, activation, lin)
        rec.add(pre, eff, self._gen, self.max_samples)

    @contextlib.contextmanager
    def _own_work(self) -> Iterator[None]:
        busy, self._busy = self._busy, True
        try:
            with torch.no_grad():
                yield
        finally:
            self._busy = busy

    def _linearization(self, name: str, phi) -> Linearization:
        """The linearisation of the element-wise ``phi`` recorded as ``name`` (computed once)."""
        if name not in self._linearizations:
            self._linearizations[name] = linearize(phi, kink=self.kink)
        return self._linearizations[name]

    def _activation_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
                return
            a = args[0]
            with self._own_work():
                lin = self._linearization(name, module.forward)
                # module.forward on a copy: bypasses the hooks and survives inplace=True.
                out = module.forward(a.detach().clone())
                self._record(name, "activation", _activation_name(module), lin, a, out - lin(a))
                pending = self._pending.pop(id(a), None)
                if pending is not None and pending[1] is a:
                    layer, _, y_static = pending
                    self._record(layer, "adaptive", _activation_name(module), lin, a, out - lin(y_static))
        return hook

    def _enter(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not self._stack:
                self._calls.clear()  # a new pass of the model
            self._stack.append(name)
        return hook

    def _leave(self, module: nn.Module, args: tuple, out: Any) -> None:
        if self._stack:
            self._stack.pop()

    def _functional_call(self, fname: str, a: torch.Tensor, out: torch.Tensor, reapply) -> None:
        if self._busy or not self._stack or any(n in self._recorded_modules for n in self._stack):
            return  # the recorder's own computations, outside the model, or inside a recorded module
        owner = self._stack[-1]
        if self.include is not None and owner not in self.include:
            return
        base = f"{owner}:{fname}" if owner else fname
        count = self._calls[base] = self._calls.get(base, 0) + 1
        name = base if count == 1 else f"{base}#{count}"
        with self._own_work():
            lin = self._linearization(name, reapply)
            self._record(name, "activation", fname, lin, a, out.detach() - lin(a))

    def _iat_hook(self, name: str):
        def hook(module: IAT, args: tuple, out: torch.Tensor) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            with self._own_work():
                lin = self._linearization(name, module.sigma)
                z = args[0].detach().movedim(module.dim, -1)
                linear = iat_reference(z.to(module.P.dtype), module.P, module.Qw, lin)
                y = out.detach().movedim(module.dim, -1).to(module.P.dtype)
                self._record(name, "iat", f"IAT({module.basis}, {module.sigma_name})", lin, z, y - linear)
        return hook

    def _adaptive_hook(self, name: str):
        def hook(module: AdaptiveLinear, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
            x = args[0] if args else kwargs.get("x")
            if not isinstance(x, torch.Tensor):
                return
            with self._own_work():
                y_static = module.linearized(x)
            self._pending[id(out)] = (name, out, y_static)
        return hook

    def _flush(self, module: nn.Module, args: tuple, out: Any) -> None:
        for layer, y, y_static in self._pending.values():
            with self._own_work():
                self._record(layer, "adaptive", None, None, y, y - y_static)
        self._pending.clear()

    # -- results ---------------------------------------------------------------------------
    def summary(self, threshold: float = 0.05) -> dict[str, dict[str, Any]]:
        """Per layer: kind, activation, linearisation, and statistics of both samples."""
        out: dict[str, dict[str, Any]] = {}
        for name, rec in self.records.items():
            lin = rec.linearization
            out[name] = {
                "kind": rec.kind,
                "activation": rec.activation,
                "slope": None if lin is None else lin.slope,
                "intercept": None if lin is None else lin.intercept,
                "seen": rec.seen,
                "preactivation": summarize(rec.preactivation, threshold),
                "effect": summarize(rec.effect, threshold),
            }
        return out

    def pooled(self, kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers' samples concatenated: (preactivations, effects), optionally of one kind."""
        recs = [r for r in self.records.values() if kind is None or r.kind == kind]
        if not recs:
            raise ValueError(f"nothing recorded{'' if kind is None else f' of kind {kind!r}'}")
        return (torch.cat([r.preactivation for r in recs]), torch.cat([r.effect for r in recs]))
