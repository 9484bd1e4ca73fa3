"""Read every chunk of a store, list what is damaged, and mark it for recomputation.

Damage is a chunk (Zarr: a shard of ``shard_size`` samples; HDF5: one sample, or one block of a
1-D array) that is missing where the store says it was written, fails its checksum, or cannot be
decoded; or an array whose metadata (shape, dtype, chunking, codecs, an HDF5 chunk index) is not what
the provenance implies. ``--repair`` marks the blocks holding damaged images, masks, features, tokens or
``written`` flags unwritten and clears the damaged chunks, so the same ``featcache extract`` computes
exactly those blocks again; ids, split and orig_hw are written once at creation, and their damage needs
a new extraction (``--overwrite``), as does damage above the chunks, and chunk damage of an HDF5 store
whose chunk index carries no checksum (format 1 and 2): there a repair cannot prove that it writes into
the damaged chunk's own bytes and not another's.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.store.feature_store import FeatureStore
from featcache.store.integrity import CHECKSUM, METADATA, UNDECODABLE, Damage, damage_message, merge_damages
from featcache.store.live_lock import store_lock
from featcache.store.schema import FIXED_ARRAYS, block_arrays


@dataclass
class VerifyReport:
    """What `verify_store` found: ``damages`` (sorted by array, then row) and, after a repair, the
    ``[start, stop)`` blocks marked unwritten. ``checksummed`` is False for a format-1 store, whose
    changed bits cannot be seen (only missing and undecodable chunks). ``refusal``: why a repair was
    refused although resuming could recompute the damage (empty: it was not)."""

    path: str
    backend: str
    n: int
    complete: bool
    checksummed: bool
    damages: list[Damage] = field(default_factory=list)
    repaired: list[tuple[int, int]] = field(default_factory=list)
    refusal: str = ""

    @property
    def clean(self) -> bool:
        return not self.damages

    @property
    def unrepairable(self) -> list[Damage]:
        """Damage that resuming `extract` cannot recompute: ids, split, orig_hw, and any array's metadata."""
        return [d for d in self.damages if d.array in FIXED_ARRAYS or d.what == METADATA]

    def fix(self) -> str:
        """One line: what to run next (empty when clean)."""
        if self.clean:
            return ""
        if self.unrepairable:
            return damage_message(self.path, self.unrepairable)
        if self.refusal:
            return self.refusal
        if self.repaired:
            samples = sum(b - a for a, b in self.repaired)
            return (
                f"{self.path}: {samples} samples in {len(self.repaired)} damaged blocks are marked unwritten; "
                f"run the same `featcache extract ... --out {self.path}` to recompute exactly those"
            )
        return (
            f"{self.path} is damaged ({len(self.damages)} ranges above); run "
            f"`featcache verify {self.path} --repair`, then the same `featcache extract ... --out {self.path}` "
            "to recompute them"
        )


def verify_store(path: str | Path, repair: bool = False) -> VerifyReport:
    """Read every chunk of every array of the store at ``path``; with ``repair``, `FeatureStore.unwrite` the
    blocks holding damage that `extract` can recompute (images, masks, features, tokens, written) where that is safe
    (`repair_refusal`). A repair holds the store's writer lock, as `extract` does."""
    lock = store_lock(path) if repair else None
    with (
        lock or nullcontext(),
        FeatureStore.open(path, writable=repair, allow_incomplete=True, check_layout=False) as store,
    ):
        record = store.record
        report = VerifyReport(
            path=str(path),
            backend=record.backend,
            n=store.n,
            complete=record.complete,
            checksummed=record.format_version >= 2,
            damages=_damages(store),
        )
        if repair and report.damages and not report.unrepairable:
            report.refusal = repair_refusal(store, report.damages)
            if not report.refusal:
                report.repaired = store.unwrite(report.damages)
    return report


def _damages(store: FeatureStore) -> list[Damage]:
    """Every damage of ``store``: its arrays' metadata (`FeatureStore.layout`), then, in the arrays whose metadata
    hold, missing chunks and chunks that fail to read. A block whose flags are unreadable counts as unwritten; its
    flags' damage already marks it."""
    damages = list(store.layout)
    broken = {d.array for d in damages}
    written = np.zeros(store.n, dtype=bool)
    if "written" not in broken:
        for a, b in store.blocks():
            found = store.check_rows("written", a, b)
            damages += found
            if not found:
                written[a:b] = store.read("written", np.arange(a, b))
    damages += [d for d in store.missing_chunks(written) if d.array not in broken]
    for name in (*FIXED_ARRAYS, *block_arrays(store.record)):
        if name == "written" or name in broken:
            continue
        for a, b in store.blocks():
            damages += store.check_rows(name, a, b)
    return merge_damages(damages)


def repair_refusal(store: FeatureStore, damages: list[Damage]) -> str:
    """Why repairing ``damages`` in place is unsafe (empty: it is safe).

    A repair writes where the chunk index points. An HDF5 store before format 3 has no checksum on its chunk
    index: a changed address fails its chunk's checksum exactly as a changed bit of data does, and writing there
    would overwrite another chunk. Zarr keeps each block in its own files, whose shard index is checksummed, and
    HDF5 from format 3 on checksums its index (a damaged one is `METADATA` damage, never repaired).
    """
    if store.record.backend != "hdf5" or store.record.format_version >= 3:
        return ""
    if not any(d.what in (CHECKSUM, UNDECODABLE) for d in damages):
        return ""  # missing chunks only: rewriting them allocates new space
    return (
        f"{store.path}: this HDF5 store (format {store.record.format_version}) has no checksum on its chunk index, "
        "so a repair cannot prove that the damaged chunks are where their index points, and rewriting them could "
        f"overwrite intact ones; rewrite the store with `featcache extract ... --out {store.path} --overwrite`"
    )
