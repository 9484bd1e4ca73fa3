"""A run's output locked as `featcache.store.extract` locks a store: ``OUT.lock`` beside the run folder (or beside
pretrain's checkpoint), taken before anything is written there and released at the end.

Two runs into one folder would take each other's resume files and write the same files; the second is refused at
once, with the pid and host of the first and the fix. A crashed run's lock is recovered by the next run
(`featcache.core.lock.WriterLock`). Under torchrun rank 0 holds it for all ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from featcache.core.context import Context
from featcache.core.io import ensure_writable_dir
from featcache.core.lock import WriterLock

R = TypeVar("R")


def out_lock(out: Path, what: str) -> WriterLock:
    """The lock of the output ``out`` (a folder or a file): ``OUT.lock`` beside it; ``what`` names it in messages."""
    out = Path(out)
    return WriterLock(out.with_name(out.name + ".lock"), f"{what} {out}")


def locks_out(what: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator for ``run(cfg, *, ctx=None)`` (``cfg.out``: the run's output): ``run`` holds `out_lock` while it
    runs, on rank 0. The lock's folder is checked first, so a read-only one is refused as the run itself would
    refuse it."""

    def decorate(run: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(run)
        def locked(cfg: Any, *, ctx: Context | None = None) -> R:
            ctx = ctx or Context.resolve()
            if not ctx.is_main:
                return run(cfg, ctx=ctx)
            lock = out_lock(cfg.out, what)
            ensure_writable_dir(lock.path.parent, value=cfg.out)
            with lock:
                return run(cfg, ctx=ctx)

        return locked

    return decorate
