"""A writer lock for a store or a run's output: one lock file holding the owner's host and pid.

A second writer is refused while the owner lives, and so is a reader (`WriterLock.refuse_if_held`); a lock whose
owner died on this host (a crash, SIGKILL) is stale: a writer recovers it, a reader ignores it. fcntl locks would
free themselves on a crash but are unreliable on network file systems, where stores of this size often live; a pid
file is explicit and testable.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import err_console


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WriterLock:
    """``with WriterLock(path, what):`` holds ``path`` exclusively for this process; ``what`` names what it guards
    in messages (``the store s.zarr``, ``the run folder runs/x``)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.held = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def _cannot_create(self, exc: OSError) -> FeatcacheError:
        """The one line for a lock that cannot be created: the store's folder is read-only, or a file is in the way."""
        folder = next(p for p in self.path.parents if p.exists())  # the last parent, "." or "/", always does
        if not folder.is_dir():
            return FeatcacheError(
                f"cannot create {self.what}: {folder} is a file, not a folder; "
                "choose another --out or move the file away"
            )
        return FeatcacheError(
            f"cannot create {self.what} in {folder} ({exc.strerror or exc}); "
            "make that folder writable or choose another --out"
        )

    def _stale(self, owner: dict) -> bool:
        """Whether ``owner`` was a process of this host that is gone (one on another host cannot be checked)."""
        pid = owner.get("pid")
        return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)

    def _refusal(self, owner: dict) -> FeatcacheError:
        return FeatcacheError(
            f"{self.what} is being written by pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
            f"since {owner.get('since', '?')}; wait for it, or delete {self.path} if that run is gone"
        )

    def refuse_if_held(self) -> None:
        """For a reader: refuse, in the one line a second writer gets, while another process holds the lock (a
        stale lock, or one this process holds, is no reason to wait)."""
        if not self.path.is_file():
            return
        owner = self._owner()
        mine = owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()
        if not mine and not self._stale(owner):
            raise self._refusal(owner)

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._cannot_create(exc) from exc
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if self._stale(owner):
                    err_console.print(
                        f"recovered a stale lock on {self.what} left by pid {owner['pid']} (no longer running)"
                    )
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refusal(owner) from None
            except OSError as exc:
                raise self._cannot_create(exc) from exc
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise FeatcacheError(f"could not take the lock {self.path}; delete it if no run is writing {self.what}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
