"""A run's rows of the store: its seeded subsets, and the rows of several runs read once onto the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import placement
from featcache.selection.ids_file import rows_of
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.protocol import Plan, subset


def check_store_run(store: FeatureStore, cfg: TrainConfig) -> None:
    """Refuse, before any work, a C run the store cannot give."""
    if cfg.layers is not None:
        store.layer_positions(cfg.layers)
    if cfg.augment == "exact" and not store.has_flip_views:
        raise FeatcacheError(
            f"{store.path} has no flip views, which --augment exact needs; extract it with --views flips "
            "(or train with --augment feature-flip or none)"
        )


@dataclass
class RunData:
    """The store rows of one (size, seed) run, and the ids of its training images."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    train_ids: list[str] = field(default_factory=list)


def select_rows(store: FeatureStore, plan: Plan, seed: int, *, train_ids: Sequence[str] | None = None) -> RunData:
    """Seeded, nested training subset (or the rows of ``train_ids``, a label selection's, in store order) and seeded
    validation subset; the whole test split."""
    train, val = store.indices("train"), store.indices("val")
    if train_ids is None:
        train_rows = train[subset(len(train), plan.size, seed, salt=0)]
    else:
        train_rows = np.sort(np.asarray(rows_of(list(train_ids), store), dtype=np.int64))
    val_rows = val[subset(len(val), plan.val_size, seed, salt=1)]
    return RunData(train_rows, val_rows, store.indices("test"), [store.ids[i] for i in train_rows])


def refuse_empty_masks(store: FeatureStore, masks: torch.Tensor, cfg: TrainConfig) -> None:
    """Refuse a training subset whose masks ``[n, S, S]`` (on the CPU: no device sync) hold no lesion pixel.

    The decoder would learn to answer "background" and score IoU 0, which says nothing about why.
    """
    if not bool(masks.any()):
        raise FeatcacheError(
            f"every mask of the training subset of {store.path} (size {cfg.size}, seed {cfg.seed}) is empty: "
            "nothing to learn; check that the dataset's masks mark the lesion as 255 (or 1) on 0, and re-extract "
            "the store"
        )


@dataclass
class SharedSplits:
    """The store data of several runs on the training device, each split read once: the sorted union of the
    runs' training rows with their inputs and masks ``[n, S, S]`` uint8, the same for validation, and the test
    split's inputs. Inputs are features ``[n, V, C, h, w]`` for C runs (V = 1 unless ``exact`` flips are
    needed), images ``[n, 3, S, S]`` uint8 for encoder runs or cached tokens ``[n, V, T, C]`` for Tk runs.

    The seeds' subsets overlap, and those of a sweep's sizes nest (at the largest size they are all the
    whole training split), so every run indexes into one copy (`positions`).
    """

    train_rows: np.ndarray
    train_inputs: torch.Tensor
    train_masks: torch.Tensor
    val_rows: np.ndarray
    val_inputs: torch.Tensor
    val_masks: torch.Tensor
    test_rows: np.ndarray
    test_inputs: torch.Tensor

    def positions(self, split: str, rows: np.ndarray) -> torch.Tensor:
        """Where the store rows ``rows`` of ``split`` (train or val) are in this copy: ``[m]`` on its device."""
        union = self.train_rows if split == "train" else self.val_rows
        device = self.train_inputs.device
        return torch.from_numpy(np.searchsorted(union, rows)).to(device)


def load_splits(
    store: FeatureStore,
    runs: list[tuple[TrainConfig, RunData]],
    device: torch.device,
    *,
    images: bool = False,
    tokens: bool = False,
) -> SharedSplits:
    """Read the rows of every run in ``runs`` once, refuse a run whose training masks are all empty, and place the
    copy on ``device``: the features (for C runs, which must share augmentation and layers) or, with ``images``,
    the images (for encoder runs), or with ``tokens`` the cached tokens (for Tk runs, which must share
    augmentation)."""
    cfg = runs[0][0]
    train_rows = np.unique(np.concatenate([r.train_rows for _, r in runs]))
    val_rows = np.unique(np.concatenate([r.val_rows for _, r in runs]))
    test_rows = runs[0][1].test_rows
    train_masks = store.masks(train_rows)
    for c, r in runs:
        refuse_empty_masks(store, train_masks[np.searchsorted(train_rows, r.train_rows)], c)
    if images:
        inputs = [store.images(rows) for rows in (train_rows, val_rows, test_rows)]
    elif tokens:
        inputs = [
            store.tokens(train_rows, identity_only=cfg.augment != "exact"),
            store.tokens(val_rows, identity_only=True),
            store.tokens(test_rows, identity_only=True),
        ]
    else:
        inputs = [
            store.features(train_rows, identity_only=cfg.augment != "exact", layers=cfg.layers),
            store.features(val_rows, identity_only=True, layers=cfg.layers),
            store.features(test_rows, identity_only=True, layers=cfg.layers),
        ]
    if placement(device, 2 * sum(x.nbytes for x in inputs)) != device:
        raise FeatcacheError(f"the inputs of these runs do not fit on {device}; use --device cpu or fewer --seeds")
    train, val, test = (x.to(device) for x in inputs)
    return SharedSplits(
        train_rows, train, train_masks.to(device), val_rows, val, store.masks(val_rows, device), test_rows, test
    )
