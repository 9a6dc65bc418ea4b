"""Ways training stops early: SIGINT / SIGTERM (cleanly, with a checkpoint) and divergence.

:class:`GracefulInterrupt` handles SIGINT and SIGTERM for a whole run.  Inside a
training loop that has declared safe points (``with interrupt.deferring():``)
the first signal only sets a flag; the loop calls :meth:`GracefulInterrupt.check`
between optimiser steps, which writes a checkpoint and raises
:class:`TrainingInterrupted` (the command line reports it with the resume
command and exit status ``128 + signal``).  Anywhere else (data loading,
evaluation, plotting) a signal raises :class:`TrainingInterrupted` at once, so
no code path silently ignores SIGTERM.  A second signal while a checkpoint is
being written raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import torch

from .distributed import collective_device

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
        self._deferring = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: give up on the clean stop
            raise KeyboardInterrupt
        self.signum = signum
        if not self._deferring:  # no safe point ahead: stop here
            raise TrainingInterrupted(signum, None)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[GracefulInterrupt]:
        """Within this block signals wait for the next :meth:`check` (a training loop's safe point)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def check(self, save: Callable[[], Path | None], dist: object = None) -> None:
        """If a signal arrived: call ``save()`` (writes a checkpoint) and raise TrainingInterrupted.

        With a multi-process ``dist`` (:class:`~unbottleneck.training.distributed.DistInfo`) the
        ranks agree first (one tiny all-reduce), so all of them stop after the same step instead
        of one waiting forever in the next step's gradient all-reduce.
        """
        signum = self.signum
        if getattr(dist, "distributed", False):
            flag = torch.tensor([signum or 0], dtype=torch.int64, device=collective_device())
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            signum = int(flag) or None
        if signum is not None:
            raise TrainingInterrupted(signum, save())
