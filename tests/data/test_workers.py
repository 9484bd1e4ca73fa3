"""featcache.data.workers: decoding workers leave Ctrl-C to the main process, and a batch hand-over it broke off prints
no traceback."""

import os
import signal
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from featcache.data.workers import quiet_worker, worker_batches


class Slow(Dataset):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.05)
        return torch.full((4,), i)


def test_workers_outlive_a_sigint_and_every_batch_comes(capsys):
    batches = worker_batches(DataLoader(Slow(), batch_size=2, num_workers=2))
    first = next(batches)
    pids = [w.pid for w in batches._workers]
    for pid in pids:
        os.kill(pid, signal.SIGINT)  # what Ctrl-C sends the whole process group
    rest = list(batches)
    assert torch.cat([first, *rest])[:, 0].tolist() == list(range(12))
    assert "Traceback" not in capsys.readouterr().err


def test_a_loader_without_workers_is_iterated_as_it_is():
    assert [b.tolist() for b in worker_batches(DataLoader([1, 2, 3], batch_size=2))] == [[1, 2], [3]]


def test_a_worker_ignores_sigint_and_drops_only_broken_hand_overs(monkeypatch, capsys):
    shown = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: shown.append(kind))
    before = signal.getsignal(signal.SIGINT)
    try:
        quiet_worker(0)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
    for kind in (EOFError, ConnectionResetError, BrokenPipeError, ValueError):
        sys.excepthook(kind, kind("x"), None)
    assert shown == [ValueError]
