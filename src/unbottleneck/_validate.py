"""Argument checks shared by the modules' constructors (one wording for each error)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["choice", "device", "matching_dtype", "positive_int", "probability"]


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an int >= 1 (bools rejected), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def probability(name: str, value: object) -> float:
    """``value`` as float if it lies in [0, 1) (a dropout rate), else a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)


def choice(name: str, value: object, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def device(name: str, value: str) -> str:
    """``value`` if it names a device this machine has (``auto``, ``cpu``, ``cuda[:N]``, ``mps``).

    A ``ValueError`` instead of torch's own error deep inside a run: an unknown name, CUDA
    asked for on a machine (or a torch build) without it, or a device index beyond the
    devices present.
    """
    import torch

    if value in ("auto", "cpu"):
        return value
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be auto, cpu, cuda[:N] or mps, got {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "no visible CUDA device"
            raise ValueError(f"{name}={value}: CUDA is not available here (torch {torch.__version__}, "
                             f"{build}); use {name}=cpu or {name}=auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={value}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{name}={value}: MPS is not available here; use {name}=cpu or {name}=auto")
    else:
        raise ValueError(f"{name} must be auto, cpu, cuda[:N] or mps, got {value!r}")
    return value


def matching_dtype(owner: str, what: str, t: object, reference: object) -> None:
    """A ``TypeError`` when tensor ``t``'s dtype differs from the module's ``reference``
    parameter outside ``torch.autocast`` (under autocast the products cast for themselves)."""
    import torch

    if t.dtype != reference.dtype and not torch.is_autocast_enabled(t.device.type):
        raise TypeError(f"{owner} {what} dtype {t.dtype} does not match its parameters' {reference.dtype}; "
                        f"convert one of them (.to({reference.dtype}) or module.to({t.dtype})) or run "
                        "under torch.autocast")
