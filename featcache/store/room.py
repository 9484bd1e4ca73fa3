"""The room a store write needs, checked against the disk and the process's file-size limit before writing."""

from __future__ import annotations

import resource
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.core.errors import FeatcacheError
from featcache.store.backend import is_url
from featcache.store.feature_store import FeatureStore
from featcache.store.schema import FEATURE_DTYPES

#: HDF5's chunk index, object headers and id strings: measured at under 16 KiB a store plus 450 bytes a
#: sample (synth stores of 20 to 500 samples at 32 to 224 px); the allowance doubles both.
_H5_META_FIXED, _H5_META_PER_SAMPLE = 32 * 1024, 1024
#: Zarr: per chunk a shard-index entry (16 bytes) and a codec header; per store its JSON documents.
_ZARR_PER_CHUNK, _ZARR_META_FIXED = 64, 64 * 1024
#: The files a block of a new Zarr store writes (images, masks, features, written, ids, split, orig_hw).
_ZARR_FILES_PER_BLOCK = 7


@dataclass(frozen=True)
class Room:
    """Bytes a write needs, uncompressed (compression can only make them fewer, so these are upper bounds).

    ``total``: on the disk; ``per_file``: in the largest single file the write grows (`ulimit -f` is per file):
    the store's one file for HDF5, a shard for Zarr.
    """

    total: int
    per_file: int


def room_needed(kind: str, row_bytes: tuple[int, int, int], rows: int, *, shard_size: int, new_store: bool) -> Room:
    """The room that writing ``rows`` samples (in blocks of ``shard_size``) needs.

    ``row_bytes``: one sample's bytes in ``images`` [3, S, S] uint8, ``masks`` [S, S] uint8 and
    ``features`` [V, C, h, w] at the store's dtype (with its ``tokens`` [V, T, C], if any); ``new_store`` adds
    what creation writes.
    """
    image, mask, features = row_bytes
    data = rows * (image + mask + features + 1)  # + the ``written`` flag
    if kind == "hdf5":
        total = data + rows * _H5_META_PER_SAMPLE + (_H5_META_FIXED if new_store else 0)
        return Room(total, total)
    blocks = -(-rows // shard_size)
    # Each file takes whole blocks of the file system; 4 KiB is the usual size.
    files = blocks * (_ZARR_FILES_PER_BLOCK if new_store else 4) * 4096
    total = data + 3 * rows * _ZARR_PER_CHUNK + files + (_ZARR_META_FIXED if new_store else 0)
    return Room(total, shard_size * (max(image, features) + _ZARR_PER_CHUNK))


def sample_bytes(
    image_size: int, n_views: int, width: int, *, grid: Sequence[int], dtype: str, token_values: int = 0
) -> tuple[int, int, int]:
    """One sample's bytes in images, masks and features (with ``token_values`` = T*C cached-token values per view)."""
    itemsize = np.dtype(FEATURE_DTYPES[dtype][0]).itemsize
    return 3 * image_size**2, image_size**2, n_views * (width * grid[0] * grid[1] + token_values) * itemsize


def store_row_bytes(store: FeatureStore) -> tuple[int, int, int]:
    record = store.record
    tokens = (record.n_tokens or 0) * store.layer_width
    return sample_bytes(
        store.image_size, len(store.view_names), record.width, grid=record.grid, dtype=record.dtype, token_values=tokens
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _bytes_on_disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def check_room(out: str, room: Room, what: str, *, fix: str, replacing: bool = False) -> None:
    """Refuse (one line with the figures and the fix: ``fix`` for the disk) unless the disk and the
    process's file-size limit (`ulimit -f`, per file) leave ``room`` for writing ``what`` to the store ``out``.

    ``replacing``: the store at ``out`` is deleted first, so its space counts as free. URLs are not checked.
    """
    if is_url(out):
        return
    path = Path(out)
    folder = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    free = shutil.disk_usage(folder).free + (_bytes_on_disk(path) if replacing and path.exists() else 0)
    if room.total > free:
        raise FeatcacheError(
            f"{out} needs up to {_size(room.total)} for {what} but {folder} has {_size(free)} free; {fix}"
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    grown = path.stat().st_size if path.is_file() and not replacing else 0  # an HDF5 store grows its one file
    if limit != resource.RLIM_INFINITY and grown + room.per_file > limit:
        raise FeatcacheError(
            f"{out} needs files of up to {_size(grown + room.per_file)} for {what} but this process may write "
            f"files of at most {_size(limit)} (`ulimit -f`); raise that limit, then run the same command again"
        )


START_FIX = "free some space or choose another --out"
RESUME_FIX = "free some space, then run the same command again: the blocks already written are kept"
