"""Selection files: the ids of chosen training images, one per line in the order chosen (what `featcache select`
writes and ``--selection-file`` reads), and the ``FILE.json`` manifest beside them (`SelectionManifest`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from featcache import __version__
from featcache.core.errors import FeatcacheError
from featcache.core.io import atomic_path, write_json
from featcache.core.json_record import JsonRecord
from featcache.store.feature_store import FeatureStore

#: How many offending ids an error line names before it says "and N more".
SHOWN = 3


@dataclass(kw_only=True)
class SelectionManifest(JsonRecord):
    """``FILE.json`` beside a selection file: the strategy, its seed and parameters (pooling, view and blocks
    read included), whether its orders nest across budgets, the store and how many training images it chose
    from, the chosen ``ids`` and store ``rows`` in the order chosen, and the seconds of reading the features
    and of the selection (``read``, ``select``) on ``device``."""

    strategy: str
    budget: int
    seed: int
    nested: bool
    params: dict
    store: str
    split: str = "train"
    candidates: int
    ids: list[str]
    rows: list[int]
    seconds: dict
    device: str
    featcache_version: str = __version__
    extra: dict = field(default_factory=dict, repr=False, compare=False)


def manifest_path(out: Path) -> Path:
    """``FILE.json`` beside the selection file ``FILE`` (the name appended to, so it never replaces ``FILE``)."""
    return out.with_name(out.name + ".json")


def write_selection(out: Path, manifest: SelectionManifest) -> Path:
    """The selection file ``out`` (the ids, one per line, in the order chosen, nothing else) and its manifest;
    returns the manifest's path."""
    with atomic_path(out) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in manifest.ids))
    path = manifest_path(out)
    write_json(path, manifest.to_json())
    return path


def read_ids(path: Path) -> list[str]:
    """The ids of a selection file, in its order (blank lines and surrounding spaces ignored); one line naming the
    file and the fix when it is missing, unreadable, empty or names an id twice."""
    option = f"--selection-file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FeatcacheError(
            f"{option} does not exist; write one id per line, "
            f"e.g. with `featcache select STORE --budget N --out {path}`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FeatcacheError(f"{option} cannot be read as text ({exc}); give a file of ids, one per line") from None
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise FeatcacheError(f"{option} holds no ids; write one training-image id per line")
    seen: dict[str, int] = {}
    for number, sample in enumerate(ids, start=1):
        if sample in seen:
            raise FeatcacheError(
                f"{option} names {sample} twice (ids {seen[sample]} and {number}); list each image once"
            )
        seen[sample] = number
    return ids


def _some(ids: list[str]) -> str:
    more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
    return ", ".join(ids[:SHOWN]) + more


def check_training_ids(ids: list[str], store: FeatureStore, path: Path) -> None:
    """Refuse, in one line, ids that ``store`` does not hold or that belong to its validation or test split."""
    option = f"--selection-file {path}"
    where = {sample: k for k, sample in enumerate(store.ids)}
    unknown = [i for i in ids if i not in where]
    if unknown:
        raise FeatcacheError(
            f"{option}: {len(unknown)} id{'s are' if len(unknown) > 1 else ' is'} not in {store.path}: "
            f"{_some(unknown)}; list ids of its training split (as `featcache select` writes them)"
        )
    splits = store.splits
    for split in ("val", "test"):
        foreign = [i for i in ids if splits[where[i]] == split]
        if foreign:
            name = "validation" if split == "val" else "test"
            raise FeatcacheError(
                f"{option}: {_some(foreign)} {'are' if len(foreign) > 1 else 'is'} in the {name} split of "
                f"{store.path}, not the training split; choose training images only ({name} images must stay "
                "unseen)"
            )
    left_out = [i for i in ids if splits[where[i]] != "train"]
    if left_out:
        raise FeatcacheError(
            f"{option}: {_some(left_out)} {'were' if len(left_out) > 1 else 'was'} left out of {store.path} when it "
            "was extracted (unreadable or unpaired); choose other training images"
        )


def rows_of(ids: list[str], store: FeatureStore) -> list[int]:
    """The store rows of ``ids`` (checked by `check_training_ids`), in their order."""
    where = {sample: k for k, sample in enumerate(store.ids)}
    return [where[i] for i in ids]
