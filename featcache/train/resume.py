"""Resumable training: a state file written atomically every so often, checked against the run's identity.

A run killed at any point restarts from the last state written (an epoch boundary) and, since the
state holds the random generator too, ends exactly where an uninterrupted run ends on the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

from featcache.core.errors import FeatcacheError
from featcache.core.io import safe_torch_load, torch_save
from featcache.core.runtime import err_console


class Checkpointer:
    """``path`` holds ``{"identity": ..., "state": ...}``; ``identity`` is what must match to resume.

    ``every_seconds``: the least wall time between two writes (0: after every epoch); the last
    epoch is always written, so a kill after it but before the outputs loses nothing.
    """

    def __init__(self, path: Path, identity: dict, every_seconds: float = 60.0) -> None:
        self.path = Path(path)
        self.identity = identity
        self.every_seconds = every_seconds
        self._last = time.monotonic()

    def load(self) -> dict | None:
        """The saved state, None if there is none; refuses a state of another run."""
        if not self.path.exists():
            return None
        saved = safe_torch_load(self.path)
        if not isinstance(saved, dict) or saved.get("identity") != self.identity:
            raise FeatcacheError(
                f"{self.path} holds an interrupted run of another configuration; delete it or choose another --out"
            )
        err_console.print(f"resuming from {self.path} (epoch {saved['state']['epoch']} finished)")
        return saved["state"]

    def due(self, epoch: int, epochs: int) -> bool:
        return epoch == epochs or time.monotonic() - self._last >= self.every_seconds

    def save(self, state: dict) -> None:
        torch_save({"identity": self.identity, "state": state}, self.path)
        self._last = time.monotonic()

    def done(self) -> None:
        """The run's outputs are written: the state is no longer needed."""
        self.path.unlink(missing_ok=True)
