"""What a store holds, and how far feature-space flipping is from the features of flipped images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featcache.store.feature_store import FeatureStore
from featcache.store.schema import FEATURE_DTYPES, VIEW_FLIPS, StoreRecord


def flip_check(store: FeatureStore, max_samples: int = 64) -> dict[str, float] | None:
    """Mean cosine similarity per flip view between ``flip(features(x))`` and ``features(flip(x))``.

    Averaged over channels' vectors at every patch position of up to ``max_samples`` evenly spaced
    samples. 1.0 would mean flipping features is exact; ViTs with learned positional embeddings
    stay below. None for a store without flip views.
    """
    if not store.has_flip_views:
        return None
    rows = np.unique(np.linspace(0, store.n - 1, min(max_samples, store.n)).round().astype(np.int64))
    feats = store.features(rows, dtype=torch.float32)  # [n, 4, L*C, h, w]
    identity = feats[:, 0]
    result = {}
    for v, name in enumerate(store.view_names):
        if name == "identity":
            continue
        flipped = identity.flip(VIEW_FLIPS[name])
        result[name] = float(F.cosine_similarity(flipped, feats[:, v], dim=1).mean())
    result["mean"] = float(np.mean(list(result.values())))
    return result


@dataclass
class StoreInfo:
    """What `store_info` found: the store's ``record`` (provenance), samples ``written``, samples per split,
    array ``shapes``, bytes on disk and the flip check ``cos`` (None without flip views or before completion)."""

    path: str
    record: StoreRecord
    written: int
    splits: dict[str, int]
    shapes: dict[str, list[int]]
    bytes_on_disk: int
    layers: list[int]
    patch_size: int
    flip_check_cos: dict[str, float] | None

    @property
    def left_out(self) -> list[str]:
        """Ids and files left out: unreadable samples, then unpaired or broken files of the dataset."""
        return (self.record.skipped_bad or []) + self.record.dataset.skipped

    def to_json(self) -> dict:
        """The summary ``featcache info --json`` prints."""
        record = self.record
        return {
            "path": self.path,
            "backend": record.backend,
            "complete": record.complete,
            "written": self.written,
            "n": record.n,
            "splits": self.splits,
            "views": list(record.view_names),
            "dtype": record.dtype,
            "compute": record.compute,
            "shapes": self.shapes,
            "bytes_on_disk": self.bytes_on_disk,
            "encoder": record.encoder.to_json(),
            "encoder_summary": record.encoder.describe(),
            "layers": self.layers,
            "depth": record.depth,
            "patch_size": self.patch_size,
            "grid": list(record.grid),
            "preprocessing": record.preprocessing.to_json(),
            "dataset": {**record.dataset.to_json(), "root": record.dataset_root},
            "skipped_bad": record.skipped_bad or [],
            "extraction": record.extraction.to_json() if record.extraction else None,
            "created": record.created,
            "format_version": record.format_version,
            "checksum": record.checksum,
            "featcache_version": record.featcache_version,
            "flip_check_cos": self.flip_check_cos,
            "tail_tokens": record.tail_tokens,
            "n_tokens": record.n_tokens,
            "tokens_bytes": self.tokens_bytes,
        }

    @property
    def tokens_bytes(self) -> int | None:
        """Bytes of the ``tokens`` array before compression (None without it)."""
        if "tokens" not in self.shapes:
            return None
        return int(np.prod(self.shapes["tokens"])) * np.dtype(FEATURE_DTYPES[self.record.dtype][0]).itemsize


def store_info(path: str) -> StoreInfo:
    """What a store holds: provenance, shapes, dtype, bytes on disk, completeness, flip check.

    An interrupted store is summarised; one with missing chunks (written blocks, or ids/split/orig_hw) is
    refused, naming them and the fix, so "complete" is said only of a whole store.
    """
    with FeatureStore.open(path, allow_incomplete=True) as store:
        store.check_whole()
        written = int(store.written().sum())
        return StoreInfo(
            path=str(path),
            record=store.record,
            written=written,
            splits={s: int((store.splits == s).sum()) for s in ("train", "val", "test")},
            shapes={
                name: list(store.backend[name].shape)
                for name in ("images", "masks", "features", *(("tokens",) if store.tail_tokens else ()))
            },
            bytes_on_disk=store.nbytes_stored(),
            layers=list(store.layers),
            patch_size=store.patch_size,
            flip_check_cos=flip_check(store) if written == store.n else None,
        )
