"""A sweep's sizes from one read of the store (on the CPU, one after another; side by side in test_cuda.py)."""

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from featcache.core.interrupt import deferred_interrupt
from featcache.store.feature_store import FeatureStore
from featcache.train.rows import select_rows
from featcache.train.run import train_group_from_store
from featcache.train.sizes import SizeGroup, gather, train_sizes_from_store
from tests.helpers import CPU, quick_train


def test_a_sweep_reads_each_split_once_and_each_size_gets_what_it_gets_alone(micro_store, monkeypatch):
    with FeatureStore.open(micro_store) as store:
        plans = {size: quick_train(size=size).plan(store) for size in (8, 4)}
        groups = [SizeGroup(plans[size], [quick_train(size=size, seed=s) for s in (0, 1)]) for size in plans]
        alone = [train_group_from_store(store, g.cfgs, ctx=CPU, plan=g.plan) for g in groups]
        reads = []
        real_features = store.features
        monkeypatch.setattr(store, "features", lambda rows, **kw: reads.append(len(rows)) or real_features(rows, **kw))
        finished = []
        swept = train_sizes_from_store(store, groups, ctx=CPU, done=lambda i, runs: finished.append(i))
        # Train, validation and test: one read each, for two sizes x two seeds; the training read is the
        # union of the nested subsets (the largest size's, for both seeds).
        train_rows = np.unique(np.concatenate([select_rows(store, plans[8], s).train_rows for s in (0, 1)]))
        assert len(reads) == 3 and reads[0] == len(train_rows) and finished == [0, 1]
    for group_alone, group_swept in zip(alone, swept, strict=True):
        for a, b in zip(group_alone, group_swept, strict=True):
            assert a.results.train_ids == b.results.train_ids
            assert a.results.history == b.results.history and a.results.test == b.results.test


def test_ctrl_c_while_sizes_train_side_by_side_stops_the_others_at_their_next_epoch():
    """`gather` (the side-by-side path's wait, which runs on CUDA only) sees a Ctrl-C within its polling interval
    though no group finishes, tells the groups still training to stop, and raises it once they have."""
    stop, finished = threading.Event(), []

    def group(i: int) -> list:
        if i == 0:
            return ["quick"]
        while not stop.wait(0.05):  # an epoch at a time, as `train_sizes_from_store`'s progress checks
            pass
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with deferred_interrupt() as interrupt, ThreadPoolExecutor(2) as pool:
            futures = {pool.submit(group, i): i for i in (0, 1)}
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            gather(futures, finish=lambda i, out: finished.append((i, out)), stop=stop, interrupt=interrupt)
    assert stop.is_set() and finished == [(0, ["quick"])]
