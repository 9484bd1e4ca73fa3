"""Opening a store for extraction: resume an interrupted one of the same identity, refuse one of another,
replace one with ``--overwrite``, or create it after checking the disk has room."""

from __future__ import annotations

import numpy as np

from featcache.core.errors import FeatcacheError
from featcache.core.ranks import Distributed
from featcache.core.runtime import err_console
from featcache.data.layouts import SampleIndex
from featcache.models.spec import AnyEncoder
from featcache.models.tail import num_prefix_tokens
from featcache.store.backend import backend_kind
from featcache.store.errors import MalformedStoreError, NotAStoreError, UnreadableStoreError
from featcache.store.extract_config import ExtractConfig
from featcache.store.feature_store import FeatureStore
from featcache.store.location import remove_store, store_exists
from featcache.store.room import RESUME_FIX, START_FIX, check_room, room_needed, sample_bytes, store_row_bytes
from featcache.store.schema import VIEWS, StoreIdentity, describe_differences
from featcache.store.writing import raise_if_write_failed


def open_for_extraction(
    cfg: ExtractConfig, *, identity: StoreIdentity, index: SampleIndex, encoder: AnyEncoder, ranks: Distributed
) -> tuple[FeatureStore, bool]:
    """The store to extract into and whether it was resumed: rank 0 decides between resume, refusal, overwrite
    and creation; other ranks open after it.

    A refusal on rank 0 reaches every rank (broadcast), so none waits for a store that never comes.
    """
    if not ranks.is_main:
        refusal = ranks.broadcast_object(None)
        if refusal:
            raise FeatcacheError(refusal)
        return FeatureStore.open(cfg.out, writable=True, allow_incomplete=True), True
    try:
        opened = _decide(cfg, identity=identity, index=index, encoder=encoder)
    except FeatcacheError as exc:
        ranks.broadcast_object(str(exc))
        raise
    ranks.broadcast_object("")
    return opened


def _decide(
    cfg: ExtractConfig, *, identity: StoreIdentity, index: SampleIndex, encoder: AnyEncoder
) -> tuple[FeatureStore, bool]:
    grid = (cfg.image_size // encoder.patch_size,) * 2
    tokens = (num_prefix_tokens(encoder) + grid[0] * grid[1], encoder.layer_width) if cfg.tail_tokens else None
    row_bytes = sample_bytes(
        cfg.image_size,
        len(VIEWS[cfg.views]),
        encoder.width,
        grid=grid,
        dtype=cfg.dtype,
        token_values=tokens[0] * tokens[1] if tokens else 0,
    )
    new_room = room_needed(
        backend_kind(cfg.out), row_bytes, len(index.samples), shard_size=cfg.shard_size, new_store=True
    )
    what = f"{len(index.samples)} samples"
    if store_exists(cfg.out) and cfg.overwrite:
        check_room(cfg.out, new_room, what, fix=START_FIX, replacing=True)
        _remove_if_ours(cfg.out)
    if store_exists(cfg.out):
        return _resume(cfg, identity), True
    check_room(cfg.out, new_room, what, fix=START_FIX)
    return _create(cfg, identity=identity, index=index, width=encoder.width, grid=grid, tokens=tokens), False


def _resume(cfg: ExtractConfig, identity: StoreIdentity) -> FeatureStore:
    """The existing store at ``cfg.out``, if it holds the same extraction and the disk has room for what is left;
    written blocks that lost chunks are marked for recomputation."""
    try:
        store = FeatureStore.open(cfg.out, writable=True, allow_incomplete=True)
    except NotAStoreError as exc:
        raise NotAStoreError(
            f"{cfg.out} is there and is not a featcache store; choose another --out or move it away"
        ) from exc
    try:
        differences = describe_differences(store.record, identity)
        if differences:
            raise FeatcacheError(
                f"{cfg.out} holds another extraction ({'; '.join(differences[:3])}); "
                f"pass --overwrite to replace it or choose another --out"
            )
        store.check_fixed()
        damaged = store.damaged_blocks()
        if damaged:
            err_console.print(
                f"{cfg.out}: {len(damaged)} written blocks lost chunks (rows from {damaged[0]}); computing them again",
                markup=False,
                highlight=False,
            )
            store.mark_incomplete()  # set again only once they are rewritten
        left = int((~store.written()).sum()) + sum(min(store.shard_size, store.n - a) for a in damaged)
        room = room_needed(
            store.record.backend, store_row_bytes(store), left, shard_size=store.shard_size, new_store=False
        )
        check_room(cfg.out, room, f"the {left} samples left", fix=RESUME_FIX)
    except FeatcacheError:
        store.close()
        raise
    return store


def _create(
    cfg: ExtractConfig,
    *,
    identity: StoreIdentity,
    index: SampleIndex,
    width: int,
    grid: tuple[int, int],
    tokens: tuple[int, int] | None,
) -> FeatureStore:
    """A new, empty store (``tokens``: the (T, C) of its cached tokens, if any); what a failed creation left is
    removed (nothing was computed yet)."""
    samples = index.samples
    store = None
    try:
        store = FeatureStore.create(
            cfg.out,
            identity=identity,
            ids=[s.id for s in samples],
            splits=[s.split for s in samples],
            orig_hw=np.array([s.orig_hw for s in samples]),
            width=width,
            grid=grid,
            shard_size=cfg.shard_size,
            compressor=cfg.compressor,
            tokens=tokens,
        )
        raise_if_write_failed(store)
    except OSError as exc:
        if store is not None:
            store.close()
        remove_store(cfg.out)
        raise FeatcacheError(
            f"cannot create {cfg.out} ({exc.strerror or exc}); {START_FIX}, or fix its permissions"
        ) from exc
    return store


def _remove_if_ours(path: str) -> None:
    """``--overwrite`` deletes a featcache store, never an unrelated file or folder."""
    try:
        FeatureStore.open(path, allow_incomplete=True).close()
    except (UnreadableStoreError, MalformedStoreError):
        pass  # ours, though unreadable or malformed: replacing it is what --overwrite is for
    except FeatcacheError as exc:
        raise FeatcacheError(
            f"{path} exists and is not a featcache store; --overwrite only replaces stores: move it away"
        ) from exc
    remove_store(path)
