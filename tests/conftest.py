"""Shared test setup: point the data layer at the offline dataset copy.

The repository sits next to ``shared/data`` (``../shared/data`` from the repo
root), which holds verified copies of every dataset, so tests never need the
network. An explicit ``UNBOTTLENECK_DATA`` in the environment wins.
"""

import os
from pathlib import Path

import pytest

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
