"""Finished sub-runs of an experiment, kept so that ``--resume`` does not redo them.

Experiments made of many short, independent trainings (one per grid point, sample
or seed) store each finished one's result as ``OUT/runs/<key>.json`` (written
atomically) beside the full config that produced it.  A resumed run (``ctx.resume``)
reuses every stored result whose config is the one it would train now (so a changed
preset is trained again) and trains only the rest; a fresh run starts with an empty
store.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from typing import Any

from .runner import RunContext, atomic_write_bytes, config_json


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

    def run(self, key: str, config: Any, compute: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """The stored result of ``key`` if it was made with ``config``, else ``compute(*args)`` stored.

        ``config``: anything :func:`~.runner.config_json` takes (a dataclass config).
        The result comes back in its JSON form either way (inf / nan as strings).
        """
        wanted = config_json(config)
        path = self._path(key)
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
            except ValueError:  # a damaged file: train again
                stored = {}
            if stored.get("config") == wanted and "result" in stored:
                return stored["result"]
        result = config_json(compute(*args))
        if self.writes:
            self.dir.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"config": wanted, "result": result}, indent=1) + "\n"
            atomic_write_bytes(path, body.encode())
        return result

