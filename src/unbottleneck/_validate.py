"""Argument checks shared by the modules' constructors (one wording for each error)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["choice", "positive_int", "probability"]


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
