"""Finished sub-runs of an experiment, kept so that ``--resume`` does not redo them.

Experiments made of many short, independent trainings (one per grid point, sample
or seed) store each finished one's result as ``OUT/runs/<key>.json`` (written
atomically).  A resumed run (``ctx.resume``) reuses every stored result and trains
only the missing ones; a fresh run starts with an empty store.
"""

from __future__ import annotations

import json
import re
import shutil
from typing import Any

from .runner import RunContext, _jsonable, atomic_write_bytes


class RunCache:
    """Per-key JSON results under ``ctx.out_dir / "runs"``."""

    def __init__(self, ctx: RunContext) -> None:
        self.dir = ctx.out_dir / "runs"
        self.writes = ctx.writes
        if not ctx.resume and self.dir.is_dir() and self.writes:
            shutil.rmtree(self.dir)

    def _path(self, key: str):
        if not re.fullmatch(r"[A-Za-z0-9_.+=-]+", key):
            raise ValueError(f"bad run key {key!r}")
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, result: dict[str, Any]) -> dict[str, Any]:
        """Store ``result`` and return its JSON form (what :meth:`get` gives back later)."""
        plain = _jsonable(result)
        if self.writes:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self._path(key), (json.dumps(plain, indent=1) + "\n").encode())
        return json.loads(json.dumps(plain))
