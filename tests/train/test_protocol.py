import numpy as np
import pytest

from featcache.core.errors import FeatcacheError
from featcache.store import FeatureStore
from featcache.train import TrainConfig
from featcache.train.protocol import STUDY_PROTOCOL, plan_run, protocol_for, subset


def test_study_rows_are_kept():
    for size, (val, epochs, batch) in STUDY_PROTOCOL.items():
        p = protocol_for(size)
        assert (p.val_size, p.epochs, p.batch_size, p.rule) == (val, epochs, batch, "study")


def test_other_sizes_follow_the_documented_rule():
    p = protocol_for(30)  # log-nearest of 20 and 40 is 40 (ties and near-ties: the larger)
    assert (p.epochs, p.batch_size, p.val_size) == (500, 10, 15)
    p = protocol_for(5)
    assert (p.epochs, p.batch_size, p.val_size) == (1200, 5, 2)
    assert protocol_for(500).val_size == 150 and protocol_for(500).epochs == 200
    with pytest.raises(FeatcacheError):
        protocol_for(0)


def test_subsets_are_nested_seeded_and_sorted():
    small, large = subset(100, 10, seed=3), subset(100, 40, seed=3)
    assert set(small) <= set(large) and np.all(np.diff(large) > 0)
    assert np.array_equal(small, subset(100, 10, seed=3))
    assert not np.array_equal(small, subset(100, 10, seed=4))
    assert not np.array_equal(subset(100, 10, seed=3, salt=1), small)
    with pytest.raises(FeatcacheError, match="only 100 are available"):
        subset(100, 101, seed=0)


def test_protocol_validation_size_is_capped_at_the_split_but_an_explicit_one_is_refused(micro_store):
    with FeatureStore.open(micro_store) as store:
        n_val = len(store.indices("val"))
        plan = TrainConfig(size=10).plan(store)  # the protocol's 5 fits; size 40's 20 would not
        assert (plan.epochs, plan.batch_size, plan.val_size, plan.note) == (1200, 5, 5, "")
        capped = plan_run(
            40, None, None, val_size=None, n_train=40, n_val=n_val, where="s.zarr"
        )  # the protocol's 20 > 6
        assert (capped.epochs, capped.batch_size, capped.val_size) == (500, 10, n_val)
        assert f"capped at the {n_val} images" in capped.note
        assert TrainConfig(size=8, val_size=n_val).plan(store).val_size == n_val
        with pytest.raises(FeatcacheError, match="--val-size 20 is larger than the validation split"):
            TrainConfig(size=8, val_size=20).plan(store)
