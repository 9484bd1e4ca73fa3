"""featcache.train.run: a run of C mode from the store (alone or grouped) and its results."""

import threading

import numpy as np
import pytest
import torch

from featcache.cli.parsing import parse_seeds
from featcache.core.errors import FeatcacheError
from featcache.results.metrics import METRICS
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.protocol import Plan
from featcache.train.rows import select_rows
from featcache.train.run import grouped_decoder, train_from_store, train_group_from_store
from featcache.train.sweep import train_decoder
from tests.helpers import (
    CPU,
    copy_zarr_arrays,
    extract_config,
    one_line_error,
    quick_sweep,
    quick_train,
    rewrite_masks_as_0_1,
)


def test_same_seed_same_metrics_and_subsets(micro_store):
    with FeatureStore.open(micro_store) as store:
        a, b, c = (train_from_store(store, quick_train(seed=s), torch.device("cpu")).results for s in (5, 5, 6))
        assert a.test == b.test and a.history == b.history
        assert a.train_ids == b.train_ids != c.train_ids
        small = select_rows(store, Plan(size=4, epochs=1, batch_size=4, val_size=2), seed=5)
        assert set(small.train_ids) <= set(a.train_ids)  # nested across sizes


def test_refusals_name_the_fix(micro_store, synth_root, tmp_path):
    with FeatureStore.open(micro_store) as store:
        with pytest.raises(FeatcacheError, match=r"--size 13 is larger than the training split .*\(12 images\)"):
            train_from_store(store, TrainConfig(size=13, epochs=1), torch.device("cpu"))
        with pytest.raises(FeatcacheError, match="--augment"):
            train_from_store(store, quick_train(augment="mixup"), torch.device("cpu"))
    identity = tmp_path / "identity.zarr"
    extract(extract_config(synth_root, identity, views="identity"), ctx=CPU)
    with FeatureStore.open(identity) as store:
        with pytest.raises(FeatcacheError, match="--views flips"):
            train_from_store(store, quick_train(), torch.device("cpu"))
        result = train_from_store(store, quick_train(augment="feature-flip"), torch.device("cpu")).results
        assert result.augment == "feature-flip"
    # A sweep refuses before it starts: nothing written, no progress shown.
    for bad in ({}, {"size": 13, "epochs": 1}, {"decoder": "mlp"}):
        with pytest.raises(FeatcacheError, match="--views flips|larger than the training split|unknown decoder"):
            train_decoder(quick_sweep(identity, tmp_path / "sweep", **bad), ctx=CPU)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(FeatcacheError, match="distinct"):
        parse_seeds("1,1")
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_eval_at_original_size_reads_masks_from_disk(micro_store):
    with FeatureStore.open(micro_store) as store:
        at_store = train_from_store(store, quick_train(), torch.device("cpu")).results
        original = train_from_store(store, quick_train(eval_size="original"), torch.device("cpu")).results
    assert original.history == at_store.history
    assert original.test.iou == pytest.approx(at_store.test.iou, abs=0.1)
    assert original.test != at_store.test


def test_grouped_seeds_equal_separate_runs(micro_store):
    """Three seeds trained as one grouped network end with the weights and metrics of three separate runs."""
    cfgs = [quick_train(epochs=4, batch_size=3, seed=s) for s in (0, 1, 2)]
    with FeatureStore.open(micro_store) as store:
        grouped = train_group_from_store(store, cfgs, ctx=CPU)
        separate = [train_from_store(store, c, torch.device("cpu")) for c in cfgs]
    for g, s in zip(grouped, separate, strict=True):
        assert g.results.train_ids == s.results.train_ids and g.results.best_epoch == s.results.best_epoch
        np.testing.assert_allclose(g.results.history.val_loss, s.results.history.val_loss, rtol=1e-4)
        for k in METRICS:
            assert g.results.test.as_dict()[k] == pytest.approx(s.results.test.as_dict()[k], abs=1e-3)
        for name, value in s.checkpoint.state_dict.items():
            torch.testing.assert_close(g.checkpoint.state_dict[name], value, rtol=1e-4, atol=1e-5, msg=name)
        assert g.results.group.runs == 3


def test_grouped_decoders_built_side_by_side_in_threads_start_from_their_own_seeds():
    """A concurrent sweep builds each size's decoder in its own thread; torch's global generator is shared."""
    cfgs = {k: [quick_train(seed=k), quick_train(seed=k + 10)] for k in range(6)}
    alone = {k: grouped_decoder(c, 16).state_dict() for k, c in cfgs.items()}
    built = {}

    def build(k):
        built[k] = grouped_decoder(cfgs[k], 16).state_dict()

    for _ in range(5):
        threads = [threading.Thread(target=build, args=(k,)) for k in cfgs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k, state in alone.items():
            assert all(torch.equal(built[k][name], value) for name, value in state.items()), k


def test_masks_stored_as_0_1_are_labels_and_a_subset_of_empty_masks_is_refused(micro_store, synth_root, tmp_path, cli):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    rewrite_masks_as_0_1(data.glob("*_GroundTruth/*.png"))
    extract(extract_config(data, tmp_path / "01.zarr", views="identity"), ctx=CPU)
    with FeatureStore.open(tmp_path / "01.zarr") as zero_one, FeatureStore.open(micro_store) as reference:
        assert torch.equal(zero_one.masks(None), reference.masks(None)) and reference.masks(None).any()
    empty = tmp_path / "empty.zarr"
    copy_zarr_arrays(micro_store, empty)["masks"][:] = 0
    refusal = rf"every mask of the training subset of {empty} \(size 8, seed 3\) is empty.*re-extract"
    with FeatureStore.open(empty) as store:
        with pytest.raises(FeatcacheError, match=refusal):
            train_from_store(store, quick_train(seed=3), torch.device("cpu"))
        with pytest.raises(FeatcacheError, match=refusal):
            train_group_from_store(store, [quick_train(seed=s) for s in (3, 4)], ctx=CPU)
    result = cli(
        "--device",
        "cpu",
        "train-decoder",
        empty,
        "--size",
        "4",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "2",
        "--out",
        tmp_path / "run",
    )
    one_line_error(result, "size 4, seed 0")
    assert not (tmp_path / "run" / "seed-0").exists()
