"""The study's published figures (theirs, not ours): mean test IoU and training seconds per size of modes E and F,
on the ISIC 2017 test set, RTX 4070 Ti Super; and whether a store is in the study's setting, where they are
drawn beside featcache's own."""

from __future__ import annotations

from pathlib import Path

from featcache.data.synth import MARKER_NAME as SYNTH_MARKER
from featcache.store.schema import StoreIdentity

STUDY_IOU = {
    "E": {2000: 0.670, 160: 0.640, 80: 0.633, 40: 0.580, 20: 0.527, 10: 0.497},
    "F": {2000: 0.630, 160: 0.634, 80: 0.610, 40: 0.587, 20: 0.539, 10: 0.507},
}
STUDY_SECONDS = {
    "E": {2000: 1638.6, 160: 347.6, 80: 293.6, 40: 260.4, 20: 275.0, 10: 175.6},
    "F": {2000: 732.7, 160: 178.2, 80: 151.8, 40: 148.4, 20: 151.5, 10: 93.9},
}

#: The study's setting: ISIC 2017's official splits and counts, a ViT-B/16 encoder at 224 px.
STUDY_LAYOUT = "isic2017"
STUDY_COUNTS = {"train": 2000, "val": 150, "test": 600}
STUDY_ARCH = "vit_b_16"
STUDY_SIZE = 224


def _synthetic(record: StoreIdentity, ids: list[str], *, by_ids: bool) -> str | None:
    """Why the store's data are `featcache synth`'s: its marker file in the data folder, or (``by_ids``: for a
    store of the official counts, whose 2,750 official ids run up to ISIC_0016xxx with gaps) ids numbered
    0..N-1 in sequence across the splits, as synth numbers them; else None."""
    root = Path(record.dataset_root) if record.dataset_root else None
    if root is not None and (root / SYNTH_MARKER).is_file():
        return f"synthetic data ({SYNTH_MARKER} in {root})"
    if by_ids and ids and ids == [f"ISIC_{i:07d}" for i in range(len(ids))]:
        return f"ids ISIC_0000000 to {ids[-1]} in sequence, as featcache synth numbers them"
    return None


def not_the_study(record: StoreIdentity, ids: list[str]) -> list[str]:
    """Why a store is not in the study's setting (empty when it is): the official ISIC 2017 splits with their
    official counts, not synthetic, extracted by a ViT-B/16 at 224 px. ``ids``: the store's sample ids."""
    reasons = []
    dataset = record.dataset
    if dataset.layout != STUDY_LAYOUT or dataset.split_config:
        reasons.append(f"{dataset.layout} layout{' with drawn splits' if dataset.split_config else ''}")
    counts = {split: dataset.counts.get(split, 0) for split in STUDY_COUNTS}
    if counts != STUDY_COUNTS:
        reasons.append("/".join(map(str, counts.values())) + " images (the study's: 2000/150/600)")
    if record.encoder.arch != STUDY_ARCH or record.preprocessing.size != STUDY_SIZE:
        reasons.append(f"{record.encoder.arch} at {record.preprocessing.size} px (the study's: vit_b_16 at 224 px)")
    synthetic = _synthetic(record, ids, by_ids=not reasons)
    return [*reasons, synthetic] if synthetic else reasons
