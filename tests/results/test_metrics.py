"""Tests for featcache.metrics: hand-computed scores, the official ISIC scorer as oracle, folders."""

import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.results.metrics import (
    CONVENTIONS,
    METRICS,
    confusion,
    mean_scores,
    scores,
)

EPS = 1e-6


def counts(*rows: tuple[int, int, int, int]) -> torch.Tensor:
    """[N, 4] int64 (tp, fp, fn, tn)."""
    return torch.tensor(rows, dtype=torch.int64)


# ---------------------------------------------------------------- confusion


def test_confusion_counts_and_strict_threshold():
    pred = torch.tensor([[[0.9, 0.5], [0.2, 0.51]]])  # [1, 2, 2]; 0.5 is not > 0.5
    truth = torch.tensor([[[1, 1], [0, 0]]], dtype=torch.uint8)
    assert confusion(pred, truth).tolist() == [[1, 1, 1, 1]]
    assert confusion(pred, truth, threshold=0.4).tolist() == [[2, 1, 0, 1]]


def test_confusion_accepts_channel_dim_and_truth_dtypes():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 16, 20, generator=gen)  # [N, 1, H, W]
    truth = torch.rand(3, 16, 20, generator=gen) > 0.5  # bool [N, H, W]
    expected = confusion(pred[:, 0], truth)
    assert expected.dtype == torch.int64 and expected.shape == (3, 4)
    assert expected.sum(1).tolist() == [16 * 20] * 3
    for as_type in (truth, truth.to(torch.uint8), truth.float(), truth[:, None].float()):
        assert torch.equal(confusion(pred, as_type), expected)
    tp = ((pred[:, 0] > 0.5) & truth).flatten(1).sum(1)
    assert torch.equal(expected[:, 0], tp)


def test_confusion_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        confusion(torch.zeros(2, 16, 16), torch.zeros(2, 16, 17))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_confusion_on_gpu_matches_cpu():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(4, 1, 32, 32, generator=gen)
    truth = torch.rand(4, 32, 32, generator=gen) > 0.5
    on_gpu = confusion(pred.cuda(), truth.cuda())
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), confusion(pred, truth))
    assert scores(on_gpu, "isic")["iou"].device.type == "cuda"


# ---------------------------------------------------------------- scores, hand-computed


def test_scores_study_convention():
    got = scores(counts((6, 2, 4, 20)), "study")
    assert got["iou"].dtype == torch.float64
    expected = {
        "iou": 6 / (12 + EPS),
        "dice": 12 / (18 + EPS),
        "sensitivity": 6 / (10 + EPS),
        "specificity": 20 / (22 + EPS),
        "accuracy": 26 / (32 + EPS),
        "thresholded_jaccard": 0.0,  # IoU 0.5 < 0.65
    }
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, abs=1e-12), name


def test_scores_isic_convention():
    got = scores(counts((6, 2, 4, 20)), "isic")
    expected = {
        "iou": 0.5,
        "dice": 12 / 18,
        "sensitivity": 0.6,
        "specificity": 20 / 22,
        "accuracy": 26 / 32,
        "thresholded_jaccard": 0.0,
    }
    for name, value in expected.items():
        assert got[name].item() == pytest.approx(value, abs=1e-12), name


# rows: both empty; empty truth, non-empty prediction; empty prediction, non-empty truth;
# truth and prediction covering the whole image
EMPTY_CASES = counts((0, 0, 0, 16), (0, 5, 0, 11), (0, 0, 5, 11), (16, 0, 0, 0))

# metric -> expected value per row of EMPTY_CASES
EXPECTED_EMPTY = {
    "isic": {
        "iou": [1.0, 0.0, 0.0, 1.0],
        "dice": [1.0, 0.0, 0.0, 1.0],
        "sensitivity": [1.0, 1.0, 0.0, 1.0],  # empty truth: sensitivity is a freebie
        "specificity": [1.0, 11 / 16, 1.0, 1.0],  # full truth: specificity is a freebie
        "accuracy": [1.0, 11 / 16, 11 / 16, 1.0],
        "thresholded_jaccard": [1.0, 0.0, 0.0, 1.0],
    },
    "study": {
        "iou": [0.0, 0.0, 0.0, 16 / (16 + EPS)],
        "dice": [0.0, 0.0, 0.0, 32 / (32 + EPS)],
        "sensitivity": [0.0, 0.0, 0.0, 16 / (16 + EPS)],
        "specificity": [16 / (16 + EPS), 11 / (16 + EPS), 11 / (11 + EPS), 0.0],
        "accuracy": [16 / (16 + EPS), 11 / (16 + EPS), 11 / (16 + EPS), 16 / (16 + EPS)],
        "thresholded_jaccard": [0.0, 0.0, 0.0, 16 / (16 + EPS)],
    },
}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_scores_empty_masks(convention):
    got = scores(EMPTY_CASES, convention)
    assert set(got) == set(METRICS)
    for name, values in EXPECTED_EMPTY[convention].items():
        assert got[name].tolist() == pytest.approx(values, abs=1e-12), name


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_thresholded_jaccard_cutoff(convention):
    # IoU 13/20 = 0.65 exactly (isic) is kept; 12/20 = 0.6 and 0.65 - eps-ish (study) are dropped
    got = scores(counts((13, 4, 3, 30), (12, 4, 4, 30)), convention)
    iou = got["iou"].tolist()
    if convention == "isic":
        assert iou[0] == 0.65
        assert got["thresholded_jaccard"].tolist() == [0.65, 0.0]
    else:
        assert iou[0] == pytest.approx(13 / (20 + EPS)) and iou[0] < 0.65
        assert got["thresholded_jaccard"].tolist() == [0.0, 0.0]
    high = scores(counts((14, 3, 3, 30)), convention)
    assert high["thresholded_jaccard"].item() == high["iou"].item() > 0.65


def test_unknown_convention_lists_choices():
    with pytest.raises(FeatcacheError, match="study, isic"):
        scores(counts((1, 0, 0, 1)), "kaggle")


def test_mean_scores_averages_over_images():
    means = mean_scores(scores(EMPTY_CASES, "isic"))
    assert set(means) == set(METRICS)
    assert all(isinstance(v, float) for v in means.values())
    assert means["iou"] == pytest.approx(0.5)
    assert means["sensitivity"] == pytest.approx(0.75)
    assert means["specificity"] == pytest.approx((3 + 11 / 16) / 4)


# ---------------------------------------------------------------- oracle: the official scorer
