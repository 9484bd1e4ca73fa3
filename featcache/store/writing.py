"""Writing one extracted block: the room checked first, a failed write turned into one line with the fix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from featcache.core.errors import FeatcacheError
from featcache.store.feature_store import FeatureStore
from featcache.store.room import RESUME_FIX, check_room, room_needed, store_row_bytes


def raise_if_write_failed(store: FeatureStore) -> None:
    """Raise the `OSError` of a write that an HDF5 store's file dropped (`featcache.store.hdf5_backend`)."""
    guard = getattr(store.backend, "guard", None)
    if guard is not None:
        guard.raise_if_failed()


@contextmanager
def explain_write_errors(store: FeatureStore) -> Iterator[None]:
    """Turn a failed write to ``store`` (a full disk, a read-only target) into one line with the fix."""
    try:
        yield
        raise_if_write_failed(store)
    except OSError as exc:
        raise FeatcacheError(
            f"cannot write {store.path} ({exc.strerror or exc}); free disk space or fix its permissions, then run the "
            "same command again: the blocks already written are kept"
        ) from exc


def write_or_explain(store: FeatureStore, start: int, rows: dict[str, list]) -> None:
    """Write one block (``rows``: lists of ``images``, ``masks``, ``features`` (and ``tokens``) arrays and the ``bad``
    rows); the room is checked first, so a disk that filled during the run stops the extraction before the write,
    and a write that fails anyway ends with the fix, the store still resumable."""
    n = sum(len(x) for x in rows["images"])
    room = room_needed(store.record.backend, store_row_bytes(store), n, shard_size=store.shard_size, new_store=False)
    check_room(str(store.path), room, f"samples {start} to {start + n - 1}", fix=RESUME_FIX)
    features, tokens = rows["features"], rows.get("tokens")
    with explain_write_errors(store):
        store.write_block(
            start,
            np.concatenate(rows["images"]),
            np.concatenate(rows["masks"]),
            features=features[0] if len(features) == 1 else torch.cat(features),
            skipped=rows["bad"],
            tokens=(tokens[0] if len(tokens) == 1 else torch.cat(tokens)) if tokens else None,
        )
