"""Ways training stops early: SIGINT / SIGTERM (cleanly, with a checkpoint) and divergence.

:class:`GracefulInterrupt` turns the first SIGINT or SIGTERM into a flag that
the training loop checks at safe points (between optimiser steps).  There the
loop writes a checkpoint and raises :class:`TrainingInterrupted`, which the
command line reports with the resume command and exit status ``128 + signal``.
A second signal while the checkpoint is being written is not lost: it
restores the default handler's behaviour by raising ``KeyboardInterrupt``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing ``checkpoint``."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        name = signal.Signals(signum).name
        where = f"; checkpoint written to {checkpoint}" if checkpoint else ""
        super().__init__(f"training interrupted by {name}{where}")
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class TrainingDiverged(FloatingPointError):
    """The training loss (or a gradient) became NaN/inf; training stopped.

    Raised before the bad step is applied, so the last checkpoint on disk is a good one;
    ``checkpoint`` names it (None if none was written yet).
    """

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        if checkpoint is not None:
            message += f"; the last good checkpoint is {checkpoint}"
        super().__init__(message)
        self.checkpoint = checkpoint


class GracefulInterrupt:
    """Context manager: record SIGINT/SIGTERM instead of dying mid-step.

    Outside the main thread signal handlers cannot be installed; the context is
    then inert (``requested`` stays False) and signals behave as usual.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: give up on the clean stop
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def check(self, save: Callable[[], Path | None]) -> None:
        """If a signal arrived: call ``save()`` (writes a checkpoint) and raise TrainingInterrupted."""
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, save())
