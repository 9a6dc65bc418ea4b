"""MNIST: an IDX reader and a tensor loader on top of the verified files.

The IDX format is a big-endian header (two zero bytes, a type code, the
number of dimensions, then one uint32 per dimension) followed by the raw
array. MNIST uses magic 2051 (uint8, 3-D: n, rows, cols) for images and
2049 (uint8, 1-D: n) for labels.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import TensorDataset

from .download import fetch_file

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MNIST",
    "MNIST_FILES",
    "clear_mnist_cache",
    "load_mnist",
    "read_idx",
]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

#: split -> (images file, labels file), names as in the ``mnist`` registry entry.
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError(
            f"corrupt IDX file {path}: truncated {what} (got {len(data)} of {n} bytes)"
        )
    return data


def _read_idx_stream(f: BinaryIO, path: Path) -> np.ndarray:
    head = _read_exact(f, 4, path, "header")
    zero, type_code, ndim = struct.unpack(">HBB", head)
    magic = struct.unpack(">I", head)[0]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"not an IDX file: {path} (magic {magic}; expected e.g. "
            f"{IDX_IMAGES_MAGIC} for images or {IDX_LABELS_MAGIC} for labels)"
        )
    dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "dimension header"))
    dtype = _IDX_DTYPES[type_code]
    count = int(np.prod(dims, dtype=np.int64))
    expected_bytes = count * dtype.itemsize

    # Read straight into the final buffer (no intermediate bytes copy, which
    # matters for the 47 MB training images).
    out = np.empty(count, dtype=dtype)
    view = memoryview(out).cast("B")
    got = 0
    while got < expected_bytes:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    if got != expected_bytes:
        raise ValueError(
            f"corrupt IDX file {path}: truncated payload (header says {tuple(dims)} -> "
            f"{expected_bytes:,} bytes, file has {got:,})"
        )
    # Reading past the end also makes gzip check its CRC, catching corrupt
    # compressed data that still decompressed to the right length.
    if f.read(1):
        raise ValueError(
            f"corrupt IDX file {path}: trailing data after the {expected_bytes:,}-byte "
            f"payload declared by the header {tuple(dims)}"
        )
    out = out.reshape(dims)
    if dtype.byteorder == ">":
        out = out.astype(dtype.newbyteorder("="))
    return out


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (``.gz``-compressed or raw) into a numpy array.

    The header's magic, type code and dimensions are validated, and the
    payload must have exactly the declared length; anything else raises
    ValueError naming the file. MNIST files give uint8 arrays of shape
    ``(n, rows, cols)`` (magic 2051) or ``(n,)`` (magic 2049).
    """
    path = Path(path)
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"  # sniff, so a misnamed file still works
    try:
        with (gzip.open(path, "rb") if is_gzip else open(path, "rb")) as f:
            return _read_idx_stream(f, path)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"corrupt IDX file {path}: bad gzip stream ({exc})") from exc


# Decoded arrays, keyed by (path, inode, mtime_ns, size) so a replaced file is
# re-read. Four entries hold both splits (images + labels); arrays are stored
# read-only so that no caller can corrupt the shared copy.
_CACHE_SIZE = 4
_array_cache: OrderedDict[tuple[str, int, int, int], np.ndarray] = OrderedDict()
_cache_lock = threading.Lock()


def _read_idx_cached(path: Path) -> np.ndarray:
    st = path.stat()
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    with _cache_lock:
        arr = _array_cache.get(key)
        if arr is not None:
            _array_cache.move_to_end(key)
            return arr
    arr = read_idx(path)
    arr.flags.writeable = False
    with _cache_lock:
        _array_cache[key] = arr
        _array_cache.move_to_end(key)
        while len(_array_cache) > _CACHE_SIZE:
            _array_cache.popitem(last=False)
    return arr


def clear_mnist_cache() -> None:
    """Drop the in-process cache of decoded MNIST arrays."""
    with _cache_lock:
        _array_cache.clear()


def _load_arrays(split: str, data_dir: str | os.PathLike[str] | None,
                 download: bool) -> tuple[np.ndarray, np.ndarray]:
    if split not in MNIST_FILES:
        raise ValueError(f"unknown MNIST split {split!r}; valid splits: {', '.join(MNIST_FILES)}")
    img_name, lbl_name = MNIST_FILES[split]
    img_path = fetch_file("mnist", img_name, data_dir=data_dir, download=download)
    lbl_path = fetch_file("mnist", lbl_name, data_dir=data_dir, download=download)
    images = _read_idx_cached(img_path)
    labels = _read_idx_cached(lbl_path)
    # The checksum already pins the content; these checks guard against a
    # registry edit pointing at the wrong kind of file.
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images (n, rows, cols), got "
                         f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lbl_path}: expected {images.shape[0]} labels, got shape {labels.shape}")
    return images, labels


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    flatten: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load an MNIST split as ``(images, labels)`` tensors.

    ``images`` are float32 in ``[0, 1]``, shaped ``(N, 784)`` when ``flatten``
    (the default) or ``(N, 1, 28, 28)`` otherwise; ``labels`` are int64 of
    shape ``(N,)``. ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000).
    Files are located with :func:`~unbottleneck.data.resolve_data_dir`,
    verified, and downloaded only if missing and ``download`` is true.
    Decoded arrays are cached in-process; every call returns fresh tensors.
    """
    images, labels = _load_arrays(split, data_dir, download)
    # astype copies out of the read-only cache, so callers may modify the result.
    x = torch.from_numpy(images.astype(np.float32))
    x.div_(255.0)
    n, rows, cols = images.shape
    x = x.reshape(n, rows * cols) if flatten else x.reshape(n, 1, rows, cols)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


class MNIST(TensorDataset):
    """MNIST as an in-memory :class:`~torch.utils.data.TensorDataset` of ``(image, label)``.

    A thin wrapper over :func:`load_mnist`; ``images`` and ``labels`` hold the
    full tensors for code that prefers whole-batch access.
    """

    classes: tuple[str, ...] = tuple(str(d) for d in range(10))

    def __init__(
        self,
        split: str = "train",
        data_dir: str | os.PathLike[str] | None = None,
        download: bool = True,
        flatten: bool = True,
    ) -> None:
        images, labels = load_mnist(split, data_dir=data_dir, download=download, flatten=flatten)
        super().__init__(images, labels)
        self.split = split
        self.images = images
        self.labels = labels

    def __repr__(self) -> str:
        return (f"MNIST(split={self.split!r}, n={len(self)}, "
                f"image_shape={tuple(self.images.shape[1:])})")
