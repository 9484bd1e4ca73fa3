"""What a store holds, and how far feature-space flipping is from the features of flipped images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from featcache.store import VIEW_FLIPS, FeatureStore, describe_encoder


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


def store_info(path: str) -> dict:
    """A JSON-able summary: provenance, shapes, dtype, bytes on disk, completeness, flip check.

    An interrupted store is summarised; one with missing chunks (written blocks, or ids/split/orig_hw) is
    refused, naming them and the fix, so "complete" is said only of a whole store.
    """
    with FeatureStore.open(path, allow_incomplete=True) as store:
        store.check_whole()
        meta = store.meta
        written = store.written()
        counts = {s: int((store.splits == s).sum()) for s in ("train", "val", "test")}
        info = {
            "path": str(path),
            "backend": meta["backend"],
            "complete": bool(meta.get("complete")),
            "written": int(written.sum()),
            "n": store.n,
            "splits": counts,
            "views": list(store.view_names),
            "dtype": meta["dtype"],
            "compute": meta.get("compute"),
            "shapes": {name: list(store.backend[name].shape) for name in ("images", "masks", "features")},
            "bytes_on_disk": store.nbytes_stored(),
            "encoder": meta["encoder"],
            "encoder_summary": describe_encoder(meta["encoder"]),
            "layers": list(store.layers),
            "depth": store.depth,
            "patch_size": store.patch_size,
            "grid": list(meta["grid"]),
            "preprocessing": meta["preprocessing"],
            "dataset": {**meta["dataset"], "root": meta.get("dataset_root")},
            "skipped_bad": meta.get("skipped_bad", []),
            "extraction": meta.get("extraction"),
            "created": meta.get("created"),
            "format_version": meta["format_version"],
            "checksum": meta.get("checksum"),
            "featcache_version": meta["featcache_version"],
            "flip_check_cos": flip_check(store) if int(written.sum()) == store.n else None,
        }
    return info
