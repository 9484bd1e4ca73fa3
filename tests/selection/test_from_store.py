"""A store's training split as candidates: identity-view features of the chosen blocks pooled per image, chosen
rows and ids in the order chosen, and one line for a store without a training split or a budget beyond it."""

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.selection import POOLING, choose, pool_features, training_candidates
from featcache.store import FeatureStore
from featcache.store.schema import ExtractionRecord
from featcache.train.protocol import subset
from tests.helpers import tiny_identity

CPU = torch.device("cpu")


def store_without_training_split(path):
    """A complete hand-made store of 3 validation and 2 test images."""
    ids = [f"ISIC_{i:07d}" for i in range(5)]
    with FeatureStore.create(
        path,
        identity=tiny_identity(),
        ids=ids,
        splits=["val"] * 3 + ["test"] * 2,
        orig_hw=np.full((5, 2), 32),
        width=8,
        grid=(2, 2),
        shard_size=5,
    ) as store:
        images = np.zeros((5, 3, 32, 32), np.uint8)
        store.write_block(0, images, images[:, 0], features=torch.randn(5, 4, 8, 2, 2))
        store.mark_complete(ExtractionRecord())
    return path


def test_candidates_are_the_training_split_pooled_per_image(micro_store):
    with FeatureStore.open(micro_store) as store:
        found = training_candidates(store, CPU)
        rows = store.indices("train")
        grids = store.features(rows, identity_only=True)[:, 0]
        assert found.rows.tolist() == rows.tolist() and found.ids == [store.ids[i] for i in rows]
        assert found.layers == list(store.layers) and found.seconds > 0
    torch.testing.assert_close(found.x, pool_features(grids))
    assert found.x.shape == (len(rows), grids.shape[1]) and found.x.dtype == torch.float32


def test_candidates_read_the_blocks_asked_for(micro_store):
    with FeatureStore.open(micro_store) as store:
        last = training_candidates(store, CPU, layers=(-1,))
        grids = store.features(store.indices("train"), identity_only=True, layers=(-1,))[:, 0]
    assert last.layers == [store.depth]
    torch.testing.assert_close(last.x, pool_features(grids))


def test_choice_is_in_the_order_chosen_and_records_how_it_compared(micro_store):
    with FeatureStore.open(micro_store) as store:
        candidates = training_candidates(store, CPU)
        for seed in (0, 3):
            chosen = choose(candidates, strategy="random", budget=5, seed=seed)
            assert sorted(chosen.rows.tolist()) == candidates.rows[subset(len(candidates.rows), 5, seed)].tolist()
            assert chosen.ids == [store.ids[i] for i in chosen.rows]
        kcenter = choose(candidates, strategy="kcenter", budget=4, seed=0)
    assert kcenter.rows.tolist() == candidates.rows[list(kcenter.selection.order)].tolist()
    params = kcenter.selection.params
    assert params["pooling"] == POOLING and params["view"] == "identity" and params["layers"] == candidates.layers


def test_a_budget_beyond_the_training_split_is_refused_in_one_line(micro_store):
    with FeatureStore.open(micro_store) as store:
        candidates = training_candidates(store, CPU)
    with pytest.raises(FeatcacheError) as caught:
        choose(candidates, strategy="kcenter", budget=13, seed=0)
    message = str(caught.value)
    assert f"--budget 13 is larger than the training split of {micro_store} (12 images); ask for at most 12" in message
    assert "\n" not in message


def test_a_store_without_a_training_split_is_refused_in_one_line(tmp_path):
    path = store_without_training_split(tmp_path / "no-train.zarr")
    with FeatureStore.open(path) as store, pytest.raises(FeatcacheError) as caught:
        training_candidates(store, CPU)
    message = str(caught.value)
    assert "has no training split to choose from (val 3, test 2)" in message and "\n" not in message
