"""featcache.train.scoring: test logits scored against the truth masks, at the store's size or at each image's
own."""

import dataclasses

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import find_samples
from featcache.data.loading import load_mask_full
from featcache.train.config import TrainConfig
from featcache.train.rows import RunData
from featcache.train.scoring import original_masks, score_logits, score_test
from tests.helpers import make_store, tiny_identity


def half_logits(n: int, size: int = 4) -> torch.Tensor:
    """Logits ``[n, 1, size, size]``: +10 on the left half, -10 on the right."""
    logits = torch.full((n, 1, size, size), -10.0)
    logits[..., : size // 2] = 10.0
    return logits


def test_per_image_scores_at_the_store_size():
    masks = torch.zeros(2, 4, 4, dtype=torch.uint8)
    masks[0, :, :2] = 1  # image 0: the left half, as predicted
    masks[1, :2, :2] = 1  # image 1: a quarter, inside the predicted half
    scores = score_logits(half_logits(2), masks, orig=False)
    torch.testing.assert_close(scores["iou"], torch.tensor([1.0, 0.5], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores["sensitivity"], torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        scores["specificity"], torch.tensor([1.0, 2 / 3], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_at_the_original_size_logits_are_upsampled_to_each_mask():
    wide, small = np.zeros((6, 8), np.uint8), np.zeros((3, 5), np.uint8)
    wide[:, :4] = 255  # the left half, which the upsampled prediction covers exactly
    small[:, :] = 1
    scores = score_logits(half_logits(2), [wide, small], orig=True)
    assert scores["iou"][0].item() == pytest.approx(1.0)
    assert 0.2 < scores["iou"][1].item() < 0.8  # half of a 5-column image, rounded by the interpolation
    with pytest.raises(ValueError):
        score_logits(half_logits(2), [wide], orig=True)


@pytest.fixture(scope="module")
def dataset_store(synth_root, tmp_path_factory):
    """An empty store recording `synth_root` as its dataset, with its ids and splits (masks unwritten)."""
    index = find_samples(synth_root)
    identity = tiny_identity()
    identity = dataclasses.replace(
        identity,
        dataset_root=str(synth_root),
        dataset=dataclasses.replace(identity.dataset, fingerprint=index.fingerprint(), split_config=None),
    )
    path = tmp_path_factory.mktemp("scoring") / "s.zarr"
    store = make_store(path, n=len(index.samples), identity=identity, splits=[s.split for s in index.samples])
    assert store.ids == [s.id for s in index.samples]
    yield store, index
    store.close()


def test_original_masks_are_read_from_the_recorded_dataset(dataset_store):
    store, index = dataset_store
    masks = original_masks(store, [index.samples[20].id, index.samples[3].id])
    assert [m.shape for m in masks] == [(48, 64), (48, 64)]
    assert np.array_equal(masks[0], load_mask_full(index.samples[20].mask)) and masks[0].any()


def test_original_masks_need_the_same_dataset_where_it_was(dataset_store, tmp_path, monkeypatch):
    store, _ = dataset_store
    record = store.record
    monkeypatch.setattr(store, "record", dataclasses.replace(record, dataset_root=str(tmp_path / "gone")))
    with pytest.raises(FeatcacheError) as err:
        original_masks(store, ["ISIC_0000000"])
    assert str(err.value) == (
        f"--eval-size original reads the masks from {tmp_path / 'gone'}, which is not there; use --eval-size 224"
    )
    changed = dataclasses.replace(record.dataset, fingerprint="x")
    monkeypatch.setattr(store, "record", dataclasses.replace(record, dataset=changed))
    with pytest.raises(FeatcacheError, match=r"^the dataset at .* changed since .*s\.zarr was extracted; re-extract"):
        original_masks(store, ["ISIC_0000000"])


def test_the_test_split_is_scored_at_the_chosen_size(dataset_store):
    store, index = dataset_store
    test_rows = store.indices("test")[:2]
    rows = RunData(np.array([0]), np.array([12]), test_rows)
    full = [load_mask_full(index.samples[i].mask) > 0 for i in test_rows]
    everything = torch.full((2, 1, 32, 32), 10.0)  # lesion everywhere: IoU is the lesion's share of the image
    at_original = score_test(store, everything, rows, cfg=TrainConfig(size=1, eval_size="original"))
    assert at_original.iou == pytest.approx(np.mean([m.mean() for m in full]), abs=1e-6)
    assert at_original.sensitivity == pytest.approx(1.0)
    store.backend["masks"][test_rows[0] : test_rows[0] + 2] = np.ones((2, 32, 32), np.uint8)
    at_store_size = score_test(store, everything, rows, cfg=TrainConfig(size=1))
    assert at_store_size.iou == pytest.approx(1.0) and at_store_size.specificity == pytest.approx(0.0)
