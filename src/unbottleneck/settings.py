"""Tuning knobs of the fast kernels, in one place.

Every knob is a field of :class:`Settings`; read the active values with :func:`get`,
change them for a block with :func:`override` (a context manager, also usable by tests
instead of patching module internals) or for the process with :func:`set_settings`::

    from unbottleneck import settings

    with settings.override(iat_chunk_elements=1 << 16, alstm_use_onednn=False):
        ...

The values are process-wide (the fused aLSTM's worker threads read them too), so
override them from one thread at a time.  Knobs used when a layer is *built*
(``iat_band_max_slots``) apply to layers built inside the block; the others are read
at every call.  The defaults are measured on a 2-core CPU (see ``benchmarks/``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Settings", "get", "override", "set_settings"]


@dataclass(frozen=True)
class Settings:
    #: Elements per chunk of the IAT kernels' M-wide intermediates (1 MiB of float32,
    #: about one L2 cache), so the recomputed state never exceeds it.
    iat_chunk_elements: int = 1 << 18
    #: Elements of the band kernel's (rows, V) work buffers per chunk, all together.
    iat_band_chunk_elements: int = 1 << 19
    #: The same budget on GPUs and other accelerators, where the chunking's purpose (a CPU
    #: cache) does not hold and every chunk costs kernel launches: 64 Mi elements, in effect
    #: the whole batch at common sizes.  A reasoned default, not yet measured on a GPU.
    iat_accelerator_chunk_elements: int = 1 << 26
    #: The band kernel loops over the R = M // (d - 1) node slots of an interval; beyond
    #: this many (M > 32 d) the generic path is used (read when a layer is built).
    iat_band_max_slots: int = 32
    #: d * M from which ``implementation="auto"`` takes the band and generic kernels ...
    iat_auto_fast_min_size: int = 65536
    #: ... the Fourier (FFT) kernel ...
    iat_auto_fft_min_size: int = 65536
    #: ... and the select kernel (measured crossovers against the dense path).
    iat_auto_select_min_size: int = 4096
    #: Fused aLSTM: oneDNN pre-packed weights for the per-step products (CPU) ...
    alstm_use_onednn: bool = True
    #: ... for weights of at least this many elements (packing costs more on small ones).
    alstm_onednn_min_numel: int = 1 << 16
    #: Recycle the fused aLSTM's large per-call buffers between calls (CPU only).
    alstm_cache_buffers: bool = True
    #: tanh computed through the (faster, on CPU) sigmoid from this many elements on (CPU only).
    alstm_tanh_via_sigmoid_min: int = 8192


_current = Settings()
_lock = threading.Lock()
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def get() -> Settings:
    """The active settings."""
    return _current


def _validated(changes: dict[str, object]) -> Settings:
    unknown = sorted(set(changes) - set(_FIELDS))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(_FIELDS)}")
    for name, value in changes.items():
        want = type(getattr(Settings(), name))
        if type(value) is not want:
            raise TypeError(f"setting {name} must be of type {want.__name__}, got {value!r}")
        if want is int and value < 1:
            raise ValueError(f"setting {name} must be >= 1, got {value}")
    return dataclasses.replace(_current, **changes)


def set_settings(**changes: object) -> Settings:
    """Change knobs for the rest of the process; returns the previous settings."""
    global _current
    with _lock:
        previous, _current = _current, _validated(changes)
    return previous


@contextlib.contextmanager
def override(**changes: object) -> Iterator[Settings]:
    """Change knobs inside a ``with`` block; the previous values come back on exit."""
    global _current
    with _lock:
        previous, _current = _current, _validated(changes)
    try:
        yield _current
    finally:
        with _lock:
            _current = previous
