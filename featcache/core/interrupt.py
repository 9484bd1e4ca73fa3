"""Ctrl-C held back to safe points while the main thread shares locks with threads of its own.

Python raises KeyboardInterrupt at whatever bytecode the main thread is running, also right after a lock was
taken inside ``threading.Condition.__enter__`` (a `queue.Queue` put or get, a future's result) and before the
``with`` block that would release it has begun. The lock then stays held forever: a writer thread waiting for it
never ends, and the interrupted command waits for that thread at its exit, never printing "interrupted". A main
thread passing items to two threads through queues in a tight loop was left holding a queue's lock by about one
Ctrl-C in a hundred. Inside `deferred_interrupt` the SIGINT is only recorded, and raised as KeyboardInterrupt
where the caller checks for it (between batches) or when the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class InterruptPoint:
    """What `deferred_interrupt` yields: ``check()`` raises KeyboardInterrupt once a Ctrl-C has come."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def deferred_interrupt() -> Iterator[InterruptPoint]:
    """A block in which Ctrl-C raises KeyboardInterrupt only at ``check()`` or at the block's end; a second Ctrl-C
    raises at once (whoever presses twice wants out now). Off the main thread, or where SIGINT is not Python's
    default handler (ignored, or the caller's own), Ctrl-C is left as it is."""
    point = InterruptPoint()
    if threading.current_thread() is not threading.main_thread():
        yield point
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield point
        return

    def record(signum, frame) -> None:
        if point.requested:
            raise KeyboardInterrupt
        point.requested = True

    signal.signal(signal.SIGINT, record)
    try:
        yield point
    finally:
        signal.signal(signal.SIGINT, previous)
    point.check()
