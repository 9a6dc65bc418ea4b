"""CIFAR-10: a reader for the binary version's archive and a tensor loader on the verified file.

The binary version (``cifar-10-binary.tar.gz``, pinned in :data:`~.download.DATASETS`)
holds six files of fixed-length records under ``cifar-10-batches-bin/``: one label
byte (0-9) then 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32 x 32).
The members are read straight from the archive (no extraction, no pickle).
"""

from __future__ import annotations

import os
import tarfile
import threading
from pathlib import Path

import numpy as np
import torch

from .download import fetch_file

__all__ = ["CIFAR10_ARCHIVE", "CIFAR10_CLASSES", "CIFAR10_MEMBERS", "load_cifar10", "read_cifar_archive"]

CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_MEMBERS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("cifar-10-batches-bin/test_batch.bin",),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_RECORD = 1 + 3 * 32 * 32

_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
_cache_lock = threading.Lock()


def read_cifar_archive(path: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels uint8 (N,))`` of one split from the archive at ``path``."""
    if split not in CIFAR10_MEMBERS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; valid splits: {', '.join(CIFAR10_MEMBERS)}")
    chunks = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in CIFAR10_MEMBERS[split]:
                try:
                    member = tar.extractfile(name)
                except KeyError:
                    member = None
                if member is None:
                    raise ValueError(f"{path}: member {name} missing; is this the CIFAR-10 *binary* version?")
                data = member.read()
                if len(data) == 0 or len(data) % _RECORD:
                    raise ValueError(f"{path}: {name} is not a whole number of {_RECORD}-byte records")
                chunks.append(np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR-10 archive ({exc})") from None
    records = np.concatenate(chunks)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} out of range 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str = "train", data_dir: str | os.PathLike[str] | None = None,
                 download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as ``(images float32 (N, 3, 32, 32) in [0, 1], labels int64 (N,))``.

    The archive is located with :func:`~unbottleneck.data.resolve_data_dir`
    (``data_dir``, else ``$UNBOTTLENECK_DATA``), verified by size and sha256, and
    downloaded only if missing and ``download`` is true.  ``split``: ``"train"``
    (50,000) or ``"test"`` (10,000).  Decoded arrays are cached in-process.
    """
    if split not in CIFAR10_MEMBERS:
        raise ValueError(f"unknown CIFAR-10 split {split!r}; valid splits: {', '.join(CIFAR10_MEMBERS)}")
    path = fetch_file("cifar10", CIFAR10_ARCHIVE, data_dir=data_dir, download=download)
    key = (str(Path(path).resolve()), split)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = read_cifar_archive(path, split)
        images, labels = _cache[key]
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))
