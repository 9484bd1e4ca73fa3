"""A sweep's sizes from one read of the store (on the CPU, one after another; side by side in test_cuda.py)."""

import numpy as np

from featcache.store.feature_store import FeatureStore
from featcache.train.rows import select_rows
from featcache.train.run import train_group_from_store
from featcache.train.sizes import SizeGroup, train_sizes_from_store
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
