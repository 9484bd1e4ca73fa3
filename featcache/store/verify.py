"""Read every chunk of a store, list what is damaged, and mark it for recomputation.

Damage is a chunk (Zarr: a shard of ``shard_size`` samples; HDF5: one sample, or one block of a
1-D array) that is missing where the store says it was written, fails its checksum, or cannot be
decoded. ``--repair`` marks the blocks holding damaged images, masks, features or ``written``
flags unwritten and clears the damaged chunks, so the same ``featcache extract`` computes exactly
those blocks again; ids, split and orig_hw are written once at creation, and their damage needs a
new extraction (``--overwrite``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.store.feature_store import FeatureStore
from featcache.store.integrity import Damage, damage_fix, merge_damages
from featcache.store.schema import BLOCK_ARRAYS, FIXED_ARRAYS


@dataclass
class VerifyReport:
    """What `verify_store` found: ``damages`` (sorted by array, then row) and, after a repair, the
    ``[start, stop)`` blocks marked unwritten. ``checksummed`` is False for a format-1 store, whose
    changed bits cannot be seen (only missing and undecodable chunks)."""

    path: str
    backend: str
    n: int
    complete: bool
    checksummed: bool
    damages: list[Damage] = field(default_factory=list)
    repaired: list[tuple[int, int]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.damages

    @property
    def unrepairable(self) -> list[Damage]:
        """Damage that resuming `extract` cannot recompute (ids, split, orig_hw)."""
        return [d for d in self.damages if d.array in FIXED_ARRAYS]

    def fix(self) -> str:
        """One line: what to run next (empty when clean)."""
        if self.clean:
            return ""
        if self.unrepairable:
            return damage_fix(self.path, self.unrepairable)
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
    blocks holding damage that `extract` can recompute (images, masks, features, written)."""
    with FeatureStore.open(path, writable=repair, allow_incomplete=True) as store:
        record = store.record
        written = np.zeros(store.n, dtype=bool)
        damages: list[Damage] = []
        for a, b in store.blocks():
            found = store.check_rows("written", a, b)
            damages += found
            if not found:
                written[a:b] = store.read("written", np.arange(a, b))
        # A block whose flags are unreadable counts as unwritten here; its flags' damage already marks it.
        damages += store.missing_chunks(written)
        for name in (*FIXED_ARRAYS, *BLOCK_ARRAYS):
            if name == "written":
                continue
            for a, b in store.blocks():
                damages += store.check_rows(name, a, b)
        report = VerifyReport(
            path=str(path),
            backend=record.backend,
            n=store.n,
            complete=record.complete,
            checksummed=record.format_version >= 2,
            damages=merge_damages(damages),
        )
        if repair and report.damages:
            report.repaired = store.unwrite(report.damages)
    return report
