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

In both, thresholded Jaccard is IoU where IoU >= 0.65 and 0 below. `featcache.results.evaluate` scores folders.
"""

from __future__ import annotations

import torch

from featcache.core.errors import FeatcacheError, OptionError

CONVENTIONS = ("study", "isic")
METRICS = ("iou", "dice", "sensitivity", "specificity", "accuracy", "thresholded_jaccard")
COUNTS = ("tp", "fp", "fn", "tn")
EPS = 1e-6
JACCARD_CUTOFF = 0.65


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


def check_convention(convention: str) -> None:
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
    check_convention(convention)
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
