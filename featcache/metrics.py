"""Segmentation metrics: per-image confusion counts -> per-image scores -> means over images.

Two conventions for the scores (`CONVENTIONS`):

- ``study``: the reproduced study's formulas, eps = 1e-6 added to every denominator
  (IoU = TP/(TP+FP+FN+eps), Dice = 2TP/(2TP+FP+FN+eps), Sensitivity = TP/(TP+FN+eps),
  Specificity = TN/(TN+FP+eps), Accuracy = (TP+TN)/(TP+FP+FN+TN+eps)). An empty truth with an
  empty prediction scores IoU = Dice = Sensitivity = 0.
- ``isic``: exactly the official ISIC challenge scorer (``isic-challenge-scoring`` 5.6.0,
  ``metrics.binary_*``): plain ratios without eps, and a ratio whose denominator is 0 scores 1:
  IoU = Dice = 1 when prediction and truth are both empty; Sensitivity = 1 when the truth is empty
  (whatever the prediction); Specificity = 1 when the truth covers the whole image; Accuracy has
  no special case.

In both, thresholded Jaccard is IoU where IoU >= 0.65 and 0 below.

`evaluate_dirs` scores a folder of predicted masks against a folder of ground-truth masks (ISIC
names, or any names matched by stem) and binarises 8-bit pixels the way the official scorer does
(see its docstring).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from featcache.data import IMAGE_EXTENSIONS, bad_file, shown
from featcache.errors import FeatcacheError, OptionError
from featcache.io import atomic_path, write_json
from featcache.runtime import err_console

CONVENTIONS = ("study", "isic")
METRICS = ("iou", "dice", "sensitivity", "specificity", "accuracy", "thresholded_jaccard")
COUNTS = ("tp", "fp", "fn", "tn")
EPS = 1e-6
JACCARD_CUTOFF = 0.65

_ID = re.compile(r"ISIC_\d{7}")
_TRUTH_NAME = re.compile(r"(ISIC_\d{7})_segmentation\.png")
_MASK_INFIX = "_segmentation"


def confusion(pred: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image confusion counts.

    pred: [N, H, W] or [N, 1, H, W] probabilities; a pixel is predicted positive when
    ``pred > threshold`` (strict, like the official scorer's ``> 128`` on 8-bit masks).
    truth: [N, H, W] or [N, 1, H, W], bool / integer / float 0-1; a pixel is positive when nonzero.
    Returns int64 [N, 4] with columns (tp, fp, fn, tn), on pred's device.
    """
    if pred.dim() == 4 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if truth.dim() == 4 and truth.shape[1] == 1:
        truth = truth[:, 0]
    if pred.dim() != 3 or pred.shape != truth.shape:
        raise ValueError(
            f"confusion needs pred and truth of shape [N, H, W] (or [N, 1, H, W]); "
            f"got pred {tuple(pred.shape)} and truth {tuple(truth.shape)}"
        )
    positive = (pred > threshold).flatten(1)  # [N, H*W]
    lesion = truth.bool().flatten(1)  # [N, H*W]
    tp = (positive & lesion).sum(1)
    fp = (positive & ~lesion).sum(1)
    fn = (~positive & lesion).sum(1)
    tn = positive.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).to(torch.int64)


def _check_convention(convention: str) -> None:
    """Refuse a convention not in `CONVENTIONS`, listing the valid ones."""
    if convention not in CONVENTIONS:
        raise OptionError(f"unknown metric convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")


def _ratio_or_one(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den elementwise, 1 where den == 0 (the official scorer's rule for undefined ratios)."""
    return torch.where(den == 0, torch.ones_like(num), num / den.clamp_min(1))


def scores(counts: torch.Tensor, convention: str = "study") -> dict[str, torch.Tensor]:
    """Per-image scores from confusion counts.

    counts: [N, 4] (tp, fp, fn, tn), as from `confusion`. Returns float64 [N] tensors keyed by
    `METRICS`, on counts' device. `convention` is one of `CONVENTIONS` (see the module docstring).
    """
    _check_convention(convention)
    tp, fp, fn, tn = counts.to(torch.float64).unbind(1)  # each [N]
    if convention == "study":
        iou = tp / (tp + fp + fn + EPS)
        dice = 2 * tp / (2 * tp + fp + fn + EPS)
        sensitivity = tp / (tp + fn + EPS)
        specificity = tn / (tn + fp + EPS)
        accuracy = (tp + tn) / (tp + fp + fn + tn + EPS)
    else:
        iou = _ratio_or_one(tp, tp + fp + fn)
        dice = _ratio_or_one(2 * tp, 2 * tp + fp + fn)
        sensitivity = _ratio_or_one(tp, tp + fn)
        specificity = _ratio_or_one(tn, tn + fp)
        accuracy = (tp + tn) / (tp + fp + fn + tn)
    return {
        "iou": iou,
        "dice": dice,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "accuracy": accuracy,
        "thresholded_jaccard": torch.where(iou >= JACCARD_CUTOFF, iou, torch.zeros_like(iou)),
    }


def mean_scores(per_image: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each [N] tensor of `per_image` averaged over its N images (macro average)."""
    if any(values.numel() == 0 for values in per_image.values()):
        raise FeatcacheError("no images to average; score at least one image")
    return {name: values.to(torch.float64).mean().item() for name, values in per_image.items()}


@dataclass
class Evaluation:
    """Scores of a prediction folder against ground truth.

    `mean`: metric -> mean over images. `per_image`: one dict per image, sorted by id, with
    ``id`` (``ISIC_<7 digits>``, or the image stem), the six `METRICS` and the counts ``tp, fp, fn, tn``.
    """

    mean: dict[str, float]
    per_image: list[dict]
    convention: str

    def to_json(self, path: Path) -> None:
        """Write ``{"convention", "mean", "per_image"}`` as JSON, atomically."""
        write_json(path, {"convention": self.convention, "mean": self.mean, "per_image": self.per_image})

    def to_csv(self, path: Path) -> None:
        """Write one row per image (columns: id, the metrics, the counts), atomically."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", *METRICS, *COUNTS])
            writer.writeheader()
            writer.writerows(self.per_image)


def _isic_id(name: str) -> str | None:
    """``ISIC_<7 digits>`` found anywhere in a prediction's file name."""
    match = _ID.search(name)
    return match.group(0) if match else None


def _isic_truth_id(name: str) -> str | None:
    """``ISIC_<7 digits>`` of a truth file named ``ISIC_<id>_segmentation.png``."""
    match = _TRUTH_NAME.search(name)
    return match.group(1) if match else None


def _stem_key(name: str) -> str:
    """The image stem of ``<stem>_segmentation.png`` or ``<stem>.png`` (what predict and plain layouts write)."""
    stem = Path(name).stem
    return stem.removesuffix(_MASK_INFIX) or stem


def _files_by_key(
    folder: Path, key: Callable[[str], str | None], what: str, naming: str, suffixes: frozenset[str] = IMAGE_EXTENSIONS
) -> dict[str, Path]:
    """Image id -> file, for the files of `folder` with one of `suffixes` that `key` names (`naming` says how)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        name = key(path.name)
        if name is None:
            continue
        if name in found:
            raise FeatcacheError(
                f"{found[name]} and {path} are both named for {name}; keep one file per image in {folder}"
            )
        found[name] = path
    if not found:
        raise FeatcacheError(f"{what} folder {folder} holds no image file named {naming}; point it at the right folder")
    return found


def _unmatched(keys: list[str], have: Path, lack: Path, what: str, fix: str) -> None:
    """Raise when `keys` (ids with a file in `have` but none in `lack`) is not empty."""
    if keys:
        raise FeatcacheError(f"{len(keys)} {what} in {have} have no counterpart in {lack} ({shown(keys)}); {fix}")


def _load_gray(path: Path) -> tuple[torch.Tensor, bool]:
    """8-bit gray levels uint8 [H, W] (colour images converted with PIL's 'L'), and whether it was a 0/1 mask.

    A mask whose values are only 0 and 1 (a common convention) is read as 0/255: under the > 128 rule it would
    otherwise be empty.
    """
    try:
        with Image.open(path) as img:
            gray = np.array(img.convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise bad_file(path, err) from err
    zero_one = bool(gray.max() == 1)
    return torch.from_numpy(gray * np.uint8(255) if zero_one else gray), zero_one


def evaluate_dirs(
    pred_dir: Path, truth_dir: Path, convention: str = "study", threshold: float = 0.5, predicted_only: bool = False
) -> Evaluation:
    """Score every predicted mask in `pred_dir` against its truth mask in `truth_dir`.

    Predictions are matched to truths by name. When the truth folder holds ISIC truths
    (``ISIC_<id>_segmentation.png``), a prediction is any image file whose name contains
    ``ISIC_<id>`` (``ISIC_0000001.png``, ``pred_ISIC_0000001_mask.png``, ...). Otherwise (a plain
    ``masks/`` folder) prediction and truth match by stem: ``<stem>_segmentation.png`` or
    ``<stem>.png`` on either side, as `featcache predict` writes and plain layouts hold. Every
    truth needs exactly one prediction of the same size and vice versa. Images are read as 8-bit
    gray (colour converted with PIL's 'L'). A truth pixel v is lesion when v > 128; a prediction
    pixel v is positive when v / 256 > threshold, i.e. v > 256 * threshold. The default 0.5 gives
    v > 128 for both, which is the official ISIC scorer's rule. ``predicted_only``: score the
    predicted images alone, when the truth folder holds more (a test split drawn from one folder).
    """
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    _check_convention(convention)
    for folder, what in ((truth_dir, "truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FeatcacheError(f"{what} folder {folder} does not exist; pass an existing folder")
    if any(_isic_truth_id(path.name) for path in truth_dir.iterdir()):
        truths = _files_by_key(truth_dir, _isic_truth_id, "truth", "ISIC_<7 digits>_segmentation.png")
        preds = _files_by_key(
            pred_dir, _isic_id, "prediction", f"with an ISIC id (ISIC_<7 digits>), as the truths in {truth_dir} are"
        )
    else:
        # Truth masks are PNGs, as data.py's plain layout reads them: a photo in the folder is no truth.
        names = "<stem>.png or <stem>_segmentation.png"
        truths = _files_by_key(
            truth_dir, _stem_key, "truth", f"ISIC_<7 digits>_segmentation.png, {names}", frozenset({".png"})
        )
        preds = _files_by_key(pred_dir, _stem_key, "prediction", names)
    if not preds.keys() & truths.keys():
        pred_name, truth_name = next(iter(preds.values())).name, next(iter(truths.values())).name
        raise FeatcacheError(
            f"no prediction in {pred_dir} has the name of a truth mask in {truth_dir} (e.g. {pred_name} vs "
            f"{truth_name}); name each prediction after its image: <stem>_segmentation.png (as featcache predict "
            "does) or one holding the ISIC id"
        )
    if not predicted_only:
        _unmatched(
            sorted(truths.keys() - preds.keys()),
            truth_dir,
            pred_dir,
            "truth masks",
            "add the missing predictions, or pass --predicted-only to score only the predicted images",
        )
    _unmatched(
        sorted(preds.keys() - truths.keys()),
        pred_dir,
        truth_dir,
        "predictions",
        "add their truth masks or remove these predictions",
    )

    keys = sorted(preds)
    counts = torch.empty(len(keys), 4, dtype=torch.int64)  # [N, 4]
    zero_one: list[str] = []
    for row, key in enumerate(keys):
        truth, truth_01 = _load_gray(truths[key])
        pred, pred_01 = _load_gray(preds[key])
        zero_one += [p.name for p, flag in ((truths[key], truth_01), (preds[key], pred_01)) if flag]
        if pred.shape != truth.shape:
            raise FeatcacheError(
                f"prediction {preds[key]} is {pred.shape[1]}x{pred.shape[0]} but truth "
                f"{truths[key]} is {truth.shape[1]}x{truth.shape[0]} (width x height); "
                "write the prediction at the truth's size"
            )
        counts[row] = confusion((pred.float() / 256)[None], (truth > 128)[None], threshold)[0]

    if zero_one:
        err_console.print(
            f"note: {len(zero_one)} masks hold only the values 0 and 1 and were read as 0/1 "
            f"(e.g. {', '.join(zero_one[:3])})",
            markup=False,
            highlight=False,
        )
    per_image = scores(counts, convention)
    rows = [
        {
            "id": key,
            **{name: per_image[name][row].item() for name in METRICS},
            **dict(zip(COUNTS, counts[row].tolist(), strict=True)),
        }
        for row, key in enumerate(keys)
    ]
    return Evaluation(mean=mean_scores(per_image), per_image=rows, convention=convention)
