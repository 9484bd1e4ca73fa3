"""featcache.train.sources: where a step's features come from and how flips are applied."""

import pytest
import torch

from featcache.models import build_encoder
from featcache.train.sources import EncoderFeatures, StoreFeatures, flip_per_sample, stacked

VIEW_DIMS = {0: (), 1: (-1,), 2: (-2,), 3: (-2, -1)}


def test_flip_per_sample_matches_views():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4).repeat(4, 1, 1, 1)  # [4, 2, 3, 4]
    out = flip_per_sample(x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    assert torch.equal(out[2], x[2].flip(-2)) and torch.equal(out[3], x[3].flip(-2, -1))


def store_features(n: int = 5, channels: int = 2) -> torch.Tensor:
    """Stored features ``[n, 4, C, 3, 4]`` float16 in which every sample and view holds other values."""
    return torch.randn(n, 4, channels, 3, 4, generator=torch.Generator().manual_seed(n)).half()


def test_exact_picks_the_stored_view_of_each_sample():
    feats = store_features()
    source = StoreFeatures(feats, "exact")
    rows, views = torch.tensor([4, 0, 2, 2]), torch.tensor([1, 3, 0, 2])
    out = source.train_features(rows, views)
    assert out.dtype == torch.float32 and out.shape == (4, 2, 3, 4)
    for i, (r, v) in enumerate(zip(rows.tolist(), views.tolist(), strict=True)):
        assert torch.equal(out[i], feats[r, v].float())


def test_feature_flip_flips_the_identity_features():
    feats = store_features()
    source = StoreFeatures(feats, "feature-flip")
    rows, views = torch.tensor([1, 3, 0, 4]), torch.tensor([0, 1, 2, 3])
    out = source.train_features(rows, views)
    for i, (r, v) in enumerate(zip(rows.tolist(), views.tolist(), strict=True)):
        assert torch.equal(out[i], feats[r, 0].flip(VIEW_DIMS[v]).float())
        if v:
            assert not torch.equal(out[i], feats[r, v].float())  # not the stored view of the flipped image


@pytest.mark.parametrize("augment", ["none", "exact", "feature-flip"])
def test_without_views_and_for_evaluation_the_identity_features(augment):
    feats = store_features()
    source = StoreFeatures(feats, augment)
    rows = torch.tensor([3, 1])
    assert torch.equal(source.train_features(rows, None), feats[[3, 1], 0].float())
    assert torch.equal(source.eval_features(rows), feats[[3, 1], 0].float())
    assert source.parameters() == []


def test_positions_map_a_runs_rows_to_the_shared_features():
    feats = store_features()
    positions = torch.tensor([4, 2, 0])  # this run's rows 0, 1, 2 are rows 4, 2, 0 of the shared tensor
    source = StoreFeatures(feats, "exact", positions=positions)
    rows, views = torch.tensor([0, 2, 1]), torch.tensor([3, 1, 0])
    assert torch.equal(source.train_features(rows, views), feats[[4, 0, 2], [3, 1, 0]].float())
    assert torch.equal(source.eval_features(rows), feats[[4, 0, 2], 0].float())


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """uint8 images ``[3, 3, 32, 32]``."""
    return torch.randint(0, 256, (3, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_a_frozen_encoder_gives_no_parameters_and_stays_in_eval(images):
    encoder = build_encoder("vit_micro", "random")
    source = EncoderFeatures(encoder, images, trainable=False)
    assert source.parameters() == []
    source.train(True)
    assert not encoder.training
    out = source.train_features(torch.tensor([0, 2]), None)
    assert out.shape == (2, 32, 2, 2) and not out.requires_grad
    with torch.no_grad():
        assert torch.allclose(out, encoder(images[[0, 2]].float() / 255))


def test_a_trainable_encoder_gives_its_parameters_and_gradients_in_training_only(images):
    encoder = build_encoder("vit_micro", "random")
    source = EncoderFeatures(encoder, images, trainable=True)
    assert source.parameters() == list(encoder.parameters()) and len(source.parameters()) > 0
    source.train(True)
    assert encoder.training
    assert source.train_features(torch.tensor([1]), None).requires_grad
    assert not source.eval_features(torch.tensor([1])).requires_grad
    source.train(False)
    assert not encoder.training


def test_encoder_views_flip_the_image_before_the_encoder(images):
    encoder = build_encoder("vit_micro", "random")
    source = EncoderFeatures(encoder, images, trainable=False)
    rows, views = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3])
    out = source.train_features(rows, views)
    with torch.no_grad():
        for i, v in enumerate(views.tolist()):
            expected = encoder(images[i : i + 1].flip(VIEW_DIMS[v]).float() / 255)[0]
            assert torch.allclose(out[i], expected, atol=1e-6)
            assert not torch.allclose(out[i], expected.flip(VIEW_DIMS[v]), atol=1e-3)  # not a feature flip


def test_stacked_puts_the_groups_side_by_side_on_channels_in_channels_last():
    a, b = store_features(4, channels=2), store_features(5, channels=3)
    sources = [StoreFeatures(a, "exact"), StoreFeatures(b, "feature-flip")]
    rows = [torch.tensor([0, 3]), torch.tensor([4, 1])]
    out = stacked(sources, rows, None)
    assert out.shape == (2, 5, 3, 4) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :2], a[[0, 3], 0].float()) and torch.equal(out[:, 2:], b[[4, 1], 0].float())
    views = [torch.tensor([1, 2]), torch.tensor([3, 0])]
    out = stacked(sources, rows, views)
    assert torch.equal(out[:, :2], a[[0, 3], [1, 2]].float())
    assert torch.equal(out[:, 2:], torch.stack([b[4, 0].flip(-2, -1), b[1, 0]]).float())
    one = stacked(sources[:1], rows[:1], None)
    assert torch.equal(one, a[[0, 3], 0].float()) and one.is_contiguous(memory_format=torch.channels_last)
