"""Checkpoints: atomic writes, safe loading and the random-number state of a run.

A checkpoint is written to a temporary file in the target folder, flushed to
disk and moved over the old one with :func:`os.replace`, so a crash or a kill at
any moment leaves either the previous checkpoint or the new one, never a
truncated file.  Checkpoints hold only tensors and plain Python containers so
they load with ``torch.load(weights_only=True)``.

:func:`rng_state` / :func:`set_rng_state` capture and restore every global
generator a training loop may draw from (Python, NumPy, torch CPU and CUDA), so
a resumed run continues with exactly the random numbers an uninterrupted one
would have drawn.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated or of the wrong kind."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` atomically: ``write(fh)`` fills a temporary file in the
    same folder, which is fsynced and moved over ``path`` with :func:`os.replace`; on any
    error (or interrupt) the old file stays and the temporary one is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def load_checkpoint(path: str | os.PathLike[str], kind: str | None = None,
                    version: int | None = None) -> dict:
    """Load a checkpoint dict (``weights_only``: no arbitrary code runs on load).

    Args:
        path: the file.
        kind, version: if given, the checkpoint's ``"kind"`` / ``"format"`` entries must match.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupt, truncated or not the expected kind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the write that made it did not "
                              "finish; delete it to start that run over")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged zip archives
        # torch's own advice (weights_only=False) would run arbitrary code from the file:
        # say what is wrong in our words instead.
        import zipfile

        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not zipfile.is_zipfile(path):
            first = "it is not a PyTorch checkpoint archive"
        elif "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            first = "it holds objects other than tensors and plain data, which this library never writes"
        raise CheckpointError(f"cannot read checkpoint {path}: {first[:200]}; the file is damaged or "
                              "truncated (or not one of ours); delete it to start that run over") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint dict")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} is a {ckpt.get('kind')!r} checkpoint, expected {kind!r}")
    if version is not None and ckpt.get("format") != version:
        raise CheckpointError(f"{path} has checkpoint format {ckpt.get('format')!r}, expected {version}")
    return ckpt


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a private generator for data."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def rng_state() -> dict:
    """The state of Python's, NumPy's and torch's global generators (weights_only-safe)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": (py[0], list(py[1]), py[2]),
        # NumPy's key array is stored as a tensor so the file loads with weights_only=True.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators captured by :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # A checkpoint from a machine with more GPUs: restore the devices this one has.
        for index, device_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)
