"""Integrity: which chunks of a store are missing, fail their checksum or cannot be decoded, and the one-line
message with the fix; `Integrity` gives a store the checks (listing its chunks, reading rows, unwriting blocks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from featcache.store.errors import DamagedChunksError
from featcache.store.schema import BLOCK_ARRAYS, FIXED_ARRAYS, block_arrays

MISSING, CHECKSUM, UNDECODABLE = "missing", "checksum mismatch", "undecodable"
#: Damage above the chunks (an array's metadata, an HDF5 chunk index): no chunk can be trusted to be where it is
#: read or written, so only a new extraction repairs it.
METADATA = "metadata"
T = TypeVar("T")


@dataclass(frozen=True)
class Damage:
    """Rows ``[start, stop)`` of ``array`` (whole chunks or shards) that cannot be trusted.

    ``what``: `MISSING`, `CHECKSUM` (mismatch), `UNDECODABLE` or `METADATA` (the whole array); ``detail``: the
    library's message (for `METADATA`: what differs).
    """

    array: str
    start: int
    stop: int
    what: str
    detail: str = ""

    @property
    def rows(self) -> str:
        if self.what == METADATA:
            return "all rows"
        return f"rows {self.start}-{self.stop - 1}" if self.stop - self.start > 1 else f"row {self.start}"

    @property
    def shown(self) -> str:
        """What is wrong, for a table: the kind, and for `METADATA` the difference."""
        return f"{METADATA}: {self.detail}" if self.what == METADATA else self.what

    def describe(self) -> str:
        """``features rows 4-7 (checksum mismatch)`` or ``features metadata (shape [16, ...], ...)``."""
        if self.what == METADATA:
            return f"{self.array} {METADATA} ({self.detail})"
        return f"{self.array} {self.rows} ({self.what})"


def merge_damages(damages: Sequence[Damage]) -> list[Damage]:
    """Adjacent ranges of one array with the same ``what`` as one `Damage` (per-sample HDF5 chunks -> row ranges);
    an array with `METADATA` damage keeps that alone (its first, over all rows): none of its chunks can be trusted."""
    metadata: dict[str, Damage] = {}
    for d in damages:
        if d.what == METADATA and d.array not in metadata:
            stop = max(x.stop for x in damages if x.array == d.array)
            metadata[d.array] = Damage(d.array, 0, stop, METADATA, d.detail)
    out: list[Damage] = []
    for d in sorted((d for d in damages if d.array not in metadata), key=lambda d: (d.array, d.start)):
        last = out[-1] if out else None
        if last is not None and (last.array, last.what, last.stop) == (d.array, d.what, d.start):
            out[-1] = Damage(d.array, last.start, d.stop, d.what, last.detail)
        else:
            out.append(d)
    return sorted([*metadata.values(), *out], key=lambda d: (d.array, d.start))


def damage_fix(path: str | Path, damages: Sequence[Damage]) -> str:
    """The command that fixes ``damages``: a re-extraction for `FIXED_ARRAYS` and `METADATA`, else verify --repair
    and resume."""
    if any(d.what == METADATA for d in damages):
        return f"rewrite the store with `featcache extract ... --out {path} --overwrite`"
    fixed = sorted({d.array for d in damages if d.array in FIXED_ARRAYS})
    if fixed:
        return (
            f"{'/'.join(fixed)} are written once at creation and cannot be recomputed by resuming: "
            f"extract the store again with `featcache extract ... --out {path} --overwrite`"
        )
    return (
        f"run `featcache verify {path} --repair`, then the same `featcache extract ... --out {path}` "
        "to recompute those samples"
    )


def damage_message(path: str | Path, damages: Sequence[Damage]) -> str:
    """One line naming the store, the damaged arrays and rows (up to four ranges) and the fix."""
    shown = ", ".join(d.describe() for d in damages[:4])
    more = f" and {len(damages) - 4} more" if len(damages) > 4 else ""
    return f"{path} is damaged: {shown}{more}; {damage_fix(path, damages)}"


class Integrity:
    """The integrity checks of a `featcache.store.FeatureStore` (its ``backend``, ``record``, ``path``, ``n``,
    ``shard_size``, ``blocks()`` and ``written()``)."""

    def missing_chunks(self, written: np.ndarray | None = None) -> list[Damage]:
        """Chunks that should be stored and are not, from one listing of the store (no chunk is read).

        Every chunk of `FIXED_ARRAYS` should be there; of `BLOCK_ARRAYS`, those of the blocks marked
        ``written`` (read here unless given; every block once the store is complete): a missing one
        would read as zeros. Unwritten blocks of an interrupted store are expected to lack theirs.
        """
        try:
            stored = self.backend.stored_chunks(self.shard_size)
        except Exception as exc:  # the store's listing itself failed (an HDF5 group that cannot be iterated)
            unlisted = f"its chunks cannot be listed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
            return [Damage(name, 0, self.n, METADATA, unlisted) for name in (*FIXED_ARRAYS, *block_arrays(self.record))]
        if self.record.complete:
            done = self.blocks()
        else:
            written = self.written() if written is None else written
            done = [(a, b) for a, b in self.blocks() if written[a:b].all()]
        damages = []
        for name in (*FIXED_ARRAYS, *block_arrays(self.record)):
            if name == "masks" and self.record.format_version < 2 and self.record.backend == "zarr":
                continue  # format 1 did not store an all-empty block of masks: absent is no proof of loss there
            step, starts = stored.get(name, (self.shard_size, set()))
            if starts is None:
                damages.append(Damage(name, 0, self.n, METADATA, "its chunk index cannot be read"))
                continue
            for a, b in self.blocks() if name in FIXED_ARRAYS else done:
                damages += [
                    Damage(name, r, min(r + step, self.n), MISSING)
                    for r in range(a - a % step, b, step)
                    if r not in starts
                ]
        return merge_damages(damages)

    def check_whole(self) -> None:
        """Refuse a store with missing chunks (`missing_chunks`) in one line: arrays, rows and the fix."""
        damages = self.missing_chunks()
        if damages:
            raise DamagedChunksError(damage_message(self.path, damages))

    def check_fixed(self) -> None:
        """Read `FIXED_ARRAYS` whole (small: one value or two per sample) and refuse them damaged, with the fix: a
        resumed extraction never rewrites them, so it must not finish on top of them."""
        damages = [d for name in FIXED_ARRAYS for d in self.check_rows(name, 0, self.n)]
        if damages:
            raise DamagedChunksError(damage_message(self.path, damages))

    def damaged_blocks(self) -> list[int]:
        """First rows of the written blocks whose images, masks, features, tokens or ``written`` chunks are missing.

        A listing, no chunk read. `extract` resuming the store computes these blocks again (as if unwritten).
        """
        found = self.missing_chunks()
        if any(d.what == METADATA for d in found):  # recomputing would write through the damage
            raise DamagedChunksError(damage_message(self.path, found))
        damages = [d for d in found if d.array in BLOCK_ARRAYS]
        return [a for a, b in self.blocks() if any(d.start < b and a < d.stop for d in damages)]

    def check_rows(self, name: str, start: int, stop: int) -> list[Damage]:
        """Read rows ``[start, stop)`` of ``name``; the chunks among them that fail (checksum or decoding), merged.

        Missing chunks read as the fill value and are not seen here (see `missing_chunks`).
        """
        array, step = self.backend[name], self.backend.rows_per_chunk(name)
        try:
            np.asarray(array[start:stop])
            return []
        except Exception:  # narrowed below, chunk by chunk: what fails alone is damage
            damages = []
        for first in range(start - start % step, stop, step):
            try:
                np.asarray(array[first : first + step])
            except Exception as exc:
                what, detail = self.backend.classify(name, exc), " ".join(str(exc).split())
                if what == METADATA:
                    detail = f"its chunk index cannot be read: {detail[:120]}"
                damages.append(Damage(name, first, min(first + step, self.n), what, detail))
        self.backend.settle()
        return merge_damages(damages)

    def _checked(self, name: str, start: int, stop: int, *, read: Callable[[], T]) -> T:
        """``read()``; a failure that a chunk of rows ``[start, stop)`` of ``name`` reproduces alone becomes a
        `DamagedChunksError` naming those rows and the fix (else the original error is raised)."""
        try:
            return read()
        except Exception as exc:
            damages = self.check_rows(name, start, stop)
            if not damages:
                raise
            raise DamagedChunksError(damage_message(self.path, damages)) from exc

    def unwrite(self, damages: Sequence[Damage]) -> list[tuple[int, int]]:
        """Mark the blocks that hold ``damages`` of `BLOCK_ARRAYS` unwritten and clear their damaged chunks (no read,
        not even of an unwritten block, trips over them), so the same `featcache extract` computes exactly those
        blocks again; returns the blocks.

        ``complete`` is cleared first and the flags before the chunks, so an interruption leaves a store that
        readers refuse and extract resumes. `FIXED_ARRAYS` damage is left as it is: extract never rewrites them.
        """
        hits = [d for d in damages if d.array in BLOCK_ARRAYS]
        blocks = [(a, b) for a, b in self.blocks() if any(d.start < b and a < d.stop for d in hits)]
        if not blocks:
            return []
        self.mark_incomplete()
        for a, b in blocks:
            self.backend.delete_chunks("written", a, b)
        self.backend.flush()
        for d in hits:
            if d.array != "written":
                self.backend.delete_chunks(d.array, d.start, d.stop)
        self.backend.flush()
        return blocks
