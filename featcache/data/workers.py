"""DataLoader workers that leave Ctrl-C to the main process.

Ctrl-C sends SIGINT to the whole process group: the decoding workers too. A worker interrupted while it hands a
batch over (its tensors travel as file descriptors, served by a background thread) leaves that thread with a broken
connection, and it printed a traceback after the main process had said "interrupted". So the workers ignore SIGINT
from the moment they exist (they are started with it blocked, and ignore it once running), and drop the traceback
of a hand-over the main process broke off; the main process stops them as it unwinds, as on any other error.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from torch.utils.data import DataLoader


def quiet_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: SIGINT ignored, and no traceback for a batch hand-over broken off by the main
    process (an ``EOFError`` or ``ConnectionError`` in the thread that serves its file descriptors)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hook = sys.excepthook

    def quiet(kind, value, traceback) -> None:
        if not issubclass(kind, EOFError | ConnectionError):
            hook(kind, value, traceback)

    sys.excepthook = quiet


@contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back on this thread (processes forked meanwhile inherit the mask); delivered when it ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def worker_batches(loader: DataLoader) -> Iterator:
    """An iterator over ``loader`` whose workers (if any) are deaf to Ctrl-C (`quiet_worker`); a Ctrl-C while they
    start reaches the main process right after."""
    if loader.num_workers == 0:
        return iter(loader)
    loader.worker_init_fn = quiet_worker
    with _sigint_blocked():
        return iter(loader)
