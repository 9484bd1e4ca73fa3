"""featcache.core.interrupt: Ctrl-C recorded inside the block and raised at the check or the block's end; a second
one at once; left alone off the main thread and where SIGINT is ignored."""

import os
import signal
import threading
import time

import pytest

from featcache.core.interrupt import deferred_interrupt


def ctrl_c() -> None:
    """SIGINT to this process, and time for Python to act on it (at the next bytecodes of the main thread)."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        pass


def test_ctrl_c_is_raised_at_the_check_not_where_it_came():
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt() as interrupt:
            ctrl_c()
            reached = interrupt.requested
            interrupt.check()
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_unchecked_is_raised_at_the_end_and_none_is_nothing():
    with deferred_interrupt() as interrupt:
        interrupt.check()
    after = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt():
            ctrl_c()
            after.append("the block ran to its end")
    assert after and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_is_raised_at_once():
    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt() as interrupt:
            ctrl_c()
            assert interrupt.requested
            ctrl_c()
            pytest.fail("the second Ctrl-C did not stop the block")


def test_an_error_in_the_block_wins_over_a_ctrl_c_held_back():
    with pytest.raises(ValueError):
        with deferred_interrupt():
            ctrl_c()
            raise ValueError
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_ignored_stays_ignored_and_other_threads_change_nothing():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_interrupt() as interrupt:
            ctrl_c()
            assert not interrupt.requested
    finally:
        signal.signal(signal.SIGINT, previous)
    seen = []

    def off_main():
        with deferred_interrupt() as interrupt:
            seen.append(signal.getsignal(signal.SIGINT))
            interrupt.check()

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
