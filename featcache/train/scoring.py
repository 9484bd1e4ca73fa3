"""Test scoring of a run: its logits against the truth masks, at the store's size or at each image's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import SplitConfig, find_samples
from featcache.data.loading import load_mask_full
from featcache.results.metrics import confusion, mean_scores, scores
from featcache.results.records import TestScores
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.rows import RunData


def original_masks(store: FeatureStore, ids: list[str]) -> list[np.ndarray]:
    """The truth masks of ``ids`` at their original resolution, from the dataset the store was made of."""
    record = store.record
    root = Path(record.dataset_root or "")
    if not root.is_dir():
        raise FeatcacheError(
            f"--eval-size original reads the masks from {root}, which is not there; use --eval-size 224"
        )
    split_cfg = record.dataset.split_config
    index = find_samples(root, SplitConfig(**split_cfg) if split_cfg else None)
    if index.fingerprint() != record.dataset.fingerprint:
        raise FeatcacheError(
            f"the dataset at {root} changed since {store.path} was extracted; re-extract it or use --eval-size 224"
        )
    by_id = {s.id: s for s in index.samples}
    return [load_mask_full(by_id[i].mask) for i in ids]


def score_logits(logits: torch.Tensor, masks: torch.Tensor | list[np.ndarray], orig: bool) -> dict[str, torch.Tensor]:
    """Per-image scores (study convention) of logits ``[n, 1, S, S]`` against masks at S or at original size."""
    if not orig:
        counts = confusion(torch.sigmoid(logits[:, 0]), masks.cpu())
    else:
        rows = []
        for logit, mask in zip(logits, masks, strict=True):
            up = F.interpolate(logit[None], size=mask.shape, mode="bilinear", align_corners=False)
            rows.append(confusion(torch.sigmoid(up[:, 0]), torch.from_numpy(mask)[None]))
        counts = torch.cat(rows)
    return scores(counts, "study")


def score_test(store: FeatureStore, logits: torch.Tensor, rows: RunData, *, cfg: TrainConfig) -> TestScores:
    """Mean test metrics of logits ``[n_test, 1, S, S]``, at S or at each image's original size."""
    if cfg.eval_size == "original":
        masks = original_masks(store, [store.ids[i] for i in rows.test_rows])
    else:
        masks = store.masks(rows.test_rows)
    return TestScores(**mean_scores(score_logits(logits, masks, cfg.eval_size == "original")))
