"""featcache.train.rows: a run's seeded rows of the store, the checks before a C run, and the rows of several runs
read once."""

import dataclasses

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.train import rows as module
from featcache.train.config import TrainConfig
from featcache.train.protocol import Plan
from featcache.train.rows import check_store_run, load_splits, refuse_empty_masks, select_rows
from tests.helpers import fill_store, make_store, tiny_identity

SPLITS = ["train"] * 6 + ["val"] * 3 + ["test"] * 2


@pytest.fixture
def store(tmp_path):
    """A complete store of 11 samples: 6 train, 3 val, 2 test, flip views, random masks."""
    with make_store(tmp_path / "s.zarr", n=11, splits=SPLITS) as store:
        fill_store(store)
        yield store


def plan(size: int, val_size: int = 2) -> Plan:
    return Plan(size=size, epochs=1, batch_size=2, val_size=val_size)


def test_a_run_draws_sorted_training_and_validation_rows_and_tests_on_the_whole_split(store):
    data = select_rows(store, plan(4), seed=0)
    assert len(data.train_rows) == 4 and set(data.train_rows) <= set(range(6))
    assert list(data.train_rows) == sorted(data.train_rows)
    assert len(data.val_rows) == 2 and set(data.val_rows) <= {6, 7, 8}
    assert data.test_rows.tolist() == [9, 10]
    assert data.train_ids == [f"ISIC_{i:07d}" for i in data.train_rows]
    again = select_rows(store, plan(4), seed=0)
    assert np.array_equal(again.train_rows, data.train_rows) and np.array_equal(again.val_rows, data.val_rows)


def test_subsets_nest_across_sizes_and_differ_across_seeds(store):
    for seed in range(3):
        small, large = select_rows(store, plan(2), seed).train_rows, select_rows(store, plan(5), seed).train_rows
        assert set(small) < set(large)
    drawn = {tuple(select_rows(store, plan(3), seed).train_rows) for seed in range(6)}
    assert len(drawn) > 1
    with pytest.raises(FeatcacheError, match="asked for 7 images but only 6 are available"):
        select_rows(store, plan(7), seed=0)


def test_exact_augmentation_needs_the_flip_views_and_layers_must_be_stored(tmp_path, store):
    check_store_run(store, TrainConfig(size=4))
    check_store_run(store, TrainConfig(size=4, layers=(-1,)))
    with pytest.raises(OptionError, match=r"^--layers 1: .* holds the outputs of block 2 of 2, not 1; "):
        check_store_run(store, TrainConfig(size=4, layers=(1,)))
    identity = dataclasses.replace(tiny_identity(), views="identity")
    with make_store(tmp_path / "identity.zarr", identity=identity) as plain:
        check_store_run(plain, TrainConfig(size=4, augment="feature-flip"))
        with pytest.raises(FeatcacheError) as err:
            check_store_run(plain, TrainConfig(size=4))
    assert str(err.value) == (
        f"{tmp_path / 'identity.zarr'} has no flip views, which --augment exact needs; extract it with --views flips "
        "(or train with --augment feature-flip or none)"
    )


def test_a_training_subset_without_lesion_pixels_is_refused(store):
    refuse_empty_masks(store, torch.tensor([[[0, 1]]], dtype=torch.uint8), TrainConfig(size=4))
    with pytest.raises(FeatcacheError) as err:
        refuse_empty_masks(store, torch.zeros(3, 2, 2, dtype=torch.uint8), TrainConfig(size=3, seed=7))
    assert str(err.value).startswith(
        f"every mask of the training subset of {store.path} (size 3, seed 7) is empty: nothing to learn; "
    )


def runs_of(store, *seeds, **options):
    return [(TrainConfig(size=3, seed=s, **options), select_rows(store, plan(3), s)) for s in seeds]


def test_several_runs_read_each_split_once_and_find_their_rows_in_it(store):
    runs = runs_of(store, 0, 1, 2)
    shared = load_splits(store, runs, torch.device("cpu"))
    union = np.unique(np.concatenate([r.train_rows for _, r in runs]))
    assert np.array_equal(shared.train_rows, union) and shared.test_rows.tolist() == [9, 10]
    assert shared.train_inputs.shape == (len(union), 4, 8, 2, 2)  # exact flips: every view kept for training
    assert shared.val_inputs.shape[1] == 1 and shared.test_inputs.shape == (2, 1, 8, 2, 2)
    for _, r in runs:
        at = shared.positions("train", r.train_rows)
        assert torch.equal(shared.train_inputs[at], store.features(r.train_rows))
        assert torch.equal(shared.train_masks[at], store.masks(r.train_rows))
        val_at = shared.positions("val", r.val_rows)
        assert torch.equal(shared.val_inputs[val_at], store.features(r.val_rows, identity_only=True))
        assert torch.equal(shared.val_masks[val_at], store.masks(r.val_rows))


def test_encoder_runs_read_images_and_other_augmentations_the_identity_view(store):
    shared = load_splits(store, runs_of(store, 0), torch.device("cpu"), images=True)
    assert shared.train_inputs.dtype == torch.uint8 and shared.train_inputs.shape == (3, 3, 32, 32)
    assert torch.equal(shared.test_inputs, store.images([9, 10]))
    flipped = load_splits(store, runs_of(store, 0, augment="feature-flip"), torch.device("cpu"))
    assert flipped.train_inputs.shape == (3, 1, 8, 2, 2)


def test_runs_with_empty_training_masks_or_too_much_data_for_the_device_are_refused(store, monkeypatch):
    runs = runs_of(store, 0, 1)
    monkeypatch.setattr(module, "placement", lambda device, nbytes: torch.device("cpu"))
    with pytest.raises(
        FeatcacheError, match=r"^the inputs of these runs do not fit on cuda; use --device cpu or fewer"
    ):
        load_splits(store, runs, torch.device("cuda"))
    store.backend["masks"][runs[1][1].train_rows] = 0
    with pytest.raises(FeatcacheError, match=r"\(size 3, seed 1\) is empty"):
        load_splits(store, runs, torch.device("cpu"))
