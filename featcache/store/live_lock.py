"""A store's writer lock seen from outside: where ``STORE.lock`` is, and the refusal a reader gets while a live
writer holds it ("being written by pid N on HOST since T"), rather than a store it would call interrupted."""

from __future__ import annotations

from pathlib import Path

from featcache.core.lock import WriterLock
from featcache.store.backend import is_url


def lock_path(out: str | Path) -> Path | None:
    """``STORE.lock`` beside a local store (None for a URL)."""
    if is_url(out):
        return None
    path = Path(out)
    return path.with_name(path.name + ".lock")


def store_lock(out: str | Path) -> WriterLock | None:
    """The writer lock of the store at ``out`` (None for a URL store, which has none)."""
    path = lock_path(out)
    return WriterLock(path, str(out)) if path is not None else None


def refuse_if_being_written(out: str | Path) -> None:
    """Refuse, in one line, to read the store at ``out`` while another live process writes it."""
    lock = store_lock(out)
    if lock is not None:
        lock.refuse_if_held()
