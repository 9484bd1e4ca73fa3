"""featcache.results.evaluate: folders of predicted masks scored against truth masks, and the ISIC scorer's convention
checked against the official package."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.core.errors import FeatcacheError, OptionError
from featcache.results.evaluate import EvaluateConfig, Evaluation, evaluate_dirs
from featcache.results.metrics import (
    COUNTS,
    METRICS,
)
from tests.helpers import write_mask

EPS = 1e-6


def evaluate(pred_dir, truth_dir, convention="study", threshold=0.5, predicted_only=False, require_all=False):
    return evaluate_dirs(
        EvaluateConfig(pred_dir, truth_dir, convention, threshold, predicted_only, require_all=require_all)
    )


def oracle_pairs(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """~30 (prediction, truth) uint8 pairs, 16x16 .. 32x32, edge cases first, values 0..255."""
    h, w = 16, 24
    empty = np.zeros((h, w), np.uint8)
    full = np.full((h, w), 255, np.uint8)
    blob = empty.copy()
    blob[4:12, 5:15] = 255
    other = empty.copy()
    other[0:3, 18:24] = 255
    edge = np.full((h, w), 128, np.uint8)  # exactly on the official "> 128" boundary
    edge[:, :8] = 129
    pairs = [
        (empty, empty),  # both empty
        (blob, empty),  # empty truth
        (empty, blob),  # empty prediction
        (blob, blob),  # identical
        (other, blob),  # disjoint
        (full, full),  # full
        (blob, full),  # full truth, partial prediction
        (full, empty),  # full prediction, empty truth
        (edge, blob),  # gray levels 128 / 129
        (blob, edge),  # gray-level truth
    ]
    while len(pairs) < 30:
        hh, ww = rng.integers(16, 33, size=2)
        truth = np.zeros((hh, ww), np.uint8)
        top, left = rng.integers(0, hh // 2), rng.integers(0, ww // 2)
        truth[top : top + rng.integers(2, hh // 2 + 1), left : left + rng.integers(2, ww // 2 + 1)] = 255
        if len(pairs) % 3 == 0:  # probability map: any gray level
            pred = rng.integers(0, 256, size=(hh, ww)).astype(np.uint8)
        else:  # a shifted, noisy copy of the truth
            pred = np.roll(truth, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
            flips = rng.random((hh, ww)) < 0.1
            pred = np.where(flips, 255 - pred, pred).astype(np.uint8)
        pairs.append((pred, truth))
    return pairs


OFFICIAL_NAMES = {
    "iou": "jaccard",
    "dice": "dice",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "accuracy": "accuracy",
    "thresholded_jaccard": "threshold_jaccard",
}


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # pandas, inside the official scorer
def test_isic_convention_matches_official_scorer(tmp_path):
    scoring = pytest.importorskip("isic_challenge_scoring")
    from isic_challenge_scoring import metrics as official
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.load_image import iter_image_pairs

    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    for i, (pred, truth) in enumerate(oracle_pairs(np.random.default_rng(0))):
        # the official scorer finds a prediction by the 7 digits in its name
        write_mask(pred_dir / f"ISIC_{i:07d}_segmentation.png", pred)
        write_mask(truth_dir / f"ISIC_{i:07d}_segmentation.png", truth)

    ours = evaluate(pred_dir, truth_dir, convention="isic")
    assert ours.convention == "isic" and len(ours.per_image) == 30

    # per image: what SegmentationScore computes for each pair before averaging
    official_rows = {}
    for pair in iter_image_pairs(truth_dir, pred_dir):
        cm = create_binary_confusion_matrix(
            truth_binary_values=pair.truth_image > 128,
            prediction_binary_values=pair.prediction_image > 128,
            name=pair.image_id,
        )
        official_rows[pair.image_id] = {
            "tp": cm["TP"],
            "fp": cm["FP"],
            "fn": cm["FN"],
            "tn": cm["TN"],
            "jaccard": official.binary_jaccard(cm),
            "dice": official.binary_dice(cm),
            "sensitivity": official.binary_sensitivity(cm),
            "specificity": official.binary_specificity(cm),
            "accuracy": official.binary_accuracy(cm),
            "threshold_jaccard": official.binary_threshold_jaccard(cm, threshold=0.65),
        }
    assert sorted(official_rows) == [row["id"] for row in ours.per_image]
    for row in ours.per_image:
        expected = official_rows[row["id"]]
        for name in COUNTS:
            assert row[name] == expected[name], (row["id"], name)
        for name, official_name in OFFICIAL_NAMES.items():
            assert math.isclose(row[name], expected[official_name], rel_tol=0, abs_tol=1e-6), (
                row["id"],
                name,
                row[name],
                expected[official_name],
            )

    macro = scoring.SegmentationScore.from_dir(truth_dir, pred_dir).macro_average
    for name, official_name in OFFICIAL_NAMES.items():
        assert math.isclose(ours.mean[name], macro[official_name], rel_tol=0, abs_tol=1e-6), name


# ---------------------------------------------------------------- evaluate_dirs


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Three predictions (varied names, one RGB) and their truths, 16x16."""
    pred_dir, truth_dir = tmp_path / "pred", tmp_path / "truth"
    truth = np.zeros((16, 16), np.uint8)
    truth[4:12, 4:12] = 255  # 64 pixels
    pred = np.zeros((16, 16), np.uint8)
    pred[4:12, 4:10] = 200  # 48 pixels inside the truth
    write_mask(truth_dir / "ISIC_0000001_segmentation.png", truth)
    write_mask(truth_dir / "ISIC_0000002_segmentation.png", truth)
    write_mask(truth_dir / "ISIC_0000003_segmentation.png", np.zeros((16, 16), np.uint8))
    write_mask(pred_dir / "ISIC_0000001.png", pred)
    write_mask(pred_dir / "pred_ISIC_0000002_mask.png", truth, mode="RGB")
    write_mask(pred_dir / "ISIC_0000003_segmentation.png", np.zeros((16, 16), np.uint8))
    return pred_dir, truth_dir


def test_evaluate_dirs_study(folders):
    result = evaluate(*folders)
    assert [row["id"] for row in result.per_image] == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]
    first = result.per_image[0]
    assert (first["tp"], first["fp"], first["fn"], first["tn"]) == (48, 0, 16, 192)
    assert first["iou"] == pytest.approx(48 / (64 + EPS))
    assert result.per_image[1]["iou"] == pytest.approx(1.0, abs=1e-6)  # RGB prediction read as gray
    assert result.per_image[2]["iou"] == 0.0  # both empty scores 0 in the study's convention
    assert result.mean["iou"] == pytest.approx((0.75 + 1.0) / 3, abs=1e-6)
    assert evaluate(*folders, convention="isic").per_image[2]["iou"] == 1.0


def test_evaluate_dirs_threshold(folders):
    # prediction gray level 200: positive for threshold < 200/256, negative above
    assert evaluate(*folders, threshold=0.78).per_image[0]["tp"] == 48
    assert evaluate(*folders, threshold=0.79).per_image[0]["tp"] == 0


def test_evaluate_dirs_refuses_size_mismatch(folders):
    pred_dir, truth_dir = folders
    write_mask(pred_dir / "ISIC_0000001.png", np.zeros((16, 20), np.uint8))
    with pytest.raises(FeatcacheError, match=r"ISIC_0000001\.png is 20x16 .* 16x16"):
        evaluate(pred_dir, truth_dir)


def test_evaluate_dirs_scores_the_predicted_images_and_counts_the_truths_left_out(folders):
    pred_dir, truth_dir = folders
    for i in range(4, 11):
        write_mask(truth_dir / f"ISIC_{i:07d}_segmentation.png", np.zeros((16, 16), np.uint8))
    # By default (and with --predicted-only, still accepted): the predicted images alone, the others counted.
    scored = evaluate(pred_dir, truth_dir)
    assert scored.unpredicted == 7 and evaluate(pred_dir, truth_dir, predicted_only=True).per_image == scored.per_image
    with pytest.raises(FeatcacheError, match=r"7 truth masks .*ISIC_0000004, .*ISIC_0000008, \.\.\..*drop --all"):
        evaluate(pred_dir, truth_dir, require_all=True)
    with pytest.raises(OptionError, match="--predicted-only and --all"):
        evaluate(pred_dir, truth_dir, predicted_only=True, require_all=True)
    for i in range(4, 11):
        (truth_dir / f"ISIC_{i:07d}_segmentation.png").unlink()
    alone = evaluate(pred_dir, truth_dir, require_all=True)
    assert alone.per_image == scored.per_image and alone.unpredicted == 0


def test_evaluate_dirs_refuses_prediction_without_truth(folders):
    pred_dir, truth_dir = folders
    write_mask(pred_dir / "ISIC_0000009.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(FeatcacheError, match=r"1 predictions .*\(ISIC_0000009\)"):
        evaluate(pred_dir, truth_dir)


def test_evaluate_dirs_refuses_two_predictions_for_one_id(folders):
    pred_dir, truth_dir = folders
    write_mask(pred_dir / "ISIC_0000001_v2.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(FeatcacheError, match="ISIC_0000001_v2.png"):
        evaluate(pred_dir, truth_dir)


def test_evaluate_dirs_refuses_missing_or_empty_dir(folders, tmp_path):
    pred_dir, truth_dir = folders
    with pytest.raises(FeatcacheError, match="nowhere"):
        evaluate(tmp_path / "nowhere", truth_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no masks here")
    with pytest.raises(FeatcacheError, match="empty"):
        evaluate(pred_dir, empty)


def test_evaluate_dirs_matches_plain_names_by_stem(tmp_path):
    """predict writes <stem>_segmentation.png; a plain masks/ folder holds <stem>.png or <stem>_segmentation.png."""
    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:12, 4:12] = 255
    masks, pred = tmp_path / "masks", tmp_path / "pred"
    write_mask(masks / "lesion a.png", lesion)
    write_mask(masks / "b_segmentation.png", lesion)
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(masks / "c.jpg")  # a photo beside the masks: no truth
    write_mask(pred / "lesion a_segmentation.png", lesion)
    write_mask(pred / "b_segmentation.png", np.zeros((16, 16), np.uint8))
    write_mask(pred / "overlays" / "b_overlay.png", lesion, mode="RGB")  # predict's overlays folder is not scored
    result = evaluate(pred, masks)
    assert [row["id"] for row in result.per_image] == ["b", "lesion a"]
    assert result.per_image[0]["tp"] == 0 and result.per_image[1]["iou"] == pytest.approx(1.0, abs=1e-6)

    other = tmp_path / "other"
    write_mask(other / "x.png", lesion)
    fix = r"no prediction in .*other has the name of a truth mask in .*masks \(e\.g\. x\.png vs b_segmentation\.png\)"
    with pytest.raises(FeatcacheError, match=fix + r"; name each prediction after its image: <stem>_segmentation\.png"):
        evaluate(other, masks)


def test_evaluate_dirs_reads_0_1_masks_as_labels_and_says_so(tmp_path, capsys):
    lesion = np.zeros((16, 16), np.uint8)
    lesion[4:12, 4:12] = 1
    write_mask(tmp_path / "masks" / "a.png", lesion)
    write_mask(tmp_path / "pred" / "a_segmentation.png", lesion * 255)
    for convention in ("study", "isic"):
        assert evaluate(tmp_path / "pred", tmp_path / "masks", convention=convention).mean["iou"] == pytest.approx(1.0)
    assert "1 masks hold only the values 0 and 1" in capsys.readouterr().err


def test_evaluate_dirs_refuses_unknown_convention(folders):
    with pytest.raises(FeatcacheError, match="study, isic"):
        evaluate(*folders, convention="nope")


def test_evaluation_json_and_csv_round_trip(folders, tmp_path):
    result = evaluate(*folders, convention="isic")
    result.to_json(tmp_path / "out" / "eval.json")
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert data["mean"] == result.mean and data["per_image"] == result.per_image
    assert Evaluation(data["mean"], data["per_image"], data["convention"]) == result

    result.to_csv(tmp_path / "out" / "eval.csv")
    with open(tmp_path / "out" / "eval.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["id", *METRICS, *COUNTS]
        rows = list(reader)
    assert [row["id"] for row in rows] == [row["id"] for row in result.per_image]
    for row, original in zip(rows, result.per_image, strict=True):
        assert {name: float(row[name]) for name in METRICS} == {name: original[name] for name in METRICS}
        assert {name: int(row[name]) for name in COUNTS} == {name: original[name] for name in COUNTS}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.csv", "eval.json"]
