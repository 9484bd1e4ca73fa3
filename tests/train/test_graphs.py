"""The capture gate's ordering (plain threads, no GPU needed); the CUDA graphs themselves are in test_cuda.py."""

import threading
import time

from featcache.train.graphs import CaptureGate, EpochGraph


def test_a_capture_waits_for_working_threads_to_pause_and_keeps_them_out_until_it_ends():
    gate = CaptureGate()
    log = []
    working, release = threading.Event(), threading.Event()

    def worker():
        with gate.working():
            log.append("epoch 1")
            working.set()
            release.wait()
            gate.pause()
            log.append("epoch 2")

    def capture():
        with gate.capturing():
            log.append("capture")
            time.sleep(0.05)
            log.append("capture ends")

    threads = [threading.Thread(target=worker, daemon=True)]
    threads[0].start()
    working.wait()
    threads.append(threading.Thread(target=capture, daemon=True))
    threads[1].start()
    time.sleep(0.1)
    assert log == ["epoch 1"]  # the worker is inside an epoch: the capture waits
    release.set()
    for thread in threads:
        thread.join(timeout=5)
    assert log == ["epoch 1", "capture", "capture ends", "epoch 2"]


def test_a_working_thread_captures_without_waiting_for_itself():
    gate = CaptureGate()
    done = []

    def worker():
        with gate.working():
            with gate.capturing():
                done.append("captured")
            gate.pause()
            done.append("went on")

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert done == ["captured", "went on"]


def test_a_disabled_pass_is_the_eager_body_every_time():
    calls = []
    graph = EpochGraph(lambda x: calls.append(x) or x + 1, "cpu", None, enabled=False)
    assert [graph(v) for v in (1, 2, 3)] == [2, 3, 4] and calls == [1, 2, 3] and graph.graph is None
