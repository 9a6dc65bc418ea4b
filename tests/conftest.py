"""Shared test setup: point the data layer at the offline dataset copy.

The repository sits next to ``shared/data`` (``../shared/data`` from the repo
root), which holds verified copies of every dataset, so tests never need the
network. An explicit ``UNBOTTLENECK_DATA`` in the environment wins.
"""

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Set at import time (before any test module is collected) so that code reading
# the variable at import or collection time sees it too.
os.environ.setdefault("UNBOTTLENECK_DATA", str(SHARED_DATA))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the offline data root; skips the test if it is not present."""
    root = Path(os.environ["UNBOTTLENECK_DATA"])
    if not (root / "mnist").is_dir():
        pytest.skip(f"offline datasets not found at {root}")
    return root


@pytest.fixture
def one_thread():
    """Run single-threaded (modules with tiny tensors use it for every test): on a busy
    2-core machine a multi-threaded BLAS call can wait a scheduler time slice (~20 ms)
    per matmul, and tiny models are fastest and timing-stable on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
