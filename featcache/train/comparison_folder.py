"""A compare-e2e folder: the sweep's whole configuration kept in ``OUT/comparison.json``, compared before anything
is written, so that an earlier sweep is never replaced silently.

The same configuration resumes (its finished runs are kept); any other is refused with what differs and the fix
(another ``--out``, or ``--overwrite``, which removes the earlier sweep's files and starts afresh). A folder that
holds an earlier sweep without a ``comparison.json`` (written before featcache kept one) is refused alike.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.io import atomic_path, write_json
from featcache.core.json_record import JsonRecord, RecordError
from featcache.core.machine import Environment
from featcache.results.records import RunResults
from featcache.store.feature_store import FeatureStore
from featcache.train.config import CompareConfig

COMPARISON_FILE = "comparison.json"
COMPARISON_FORMAT = "featcache-comparison/1"
#: What a sweep writes in its folder, and `--overwrite` removes (nothing else there is touched).
SWEEP_FILES = (
    "report.md",
    "results.csv",
    "metrics_vs_size.png",
    "loss_curves.png",
    "cases.png",
    "lr_grid.png",
    "spectrum.png",
    "selection_vs_size.png",
    "selection.csv",
    COMPARISON_FILE,
)
SWEEP_FOLDERS = ("runs",)
#: A case run's predicted masks of the report's case images, uint8 ``[n, S, S]``, kept for a resumed sweep.
CASE_MASKS = "case_masks.npy"
#: Options that change only the report, not the runs: not compared.
REPORT_OPTIONS = ("out", "overwrite", "study_lines")


@dataclass(kw_only=True)
class ComparisonFile(JsonRecord):
    """``OUT/comparison.json``: its format, the sweep's ``configuration`` (`sweep_configuration`) and where it ran
    (`featcache.core.machine.Environment`: the machine, the load at its start and, once finished, at its end)."""

    NESTED: ClassVar = {"environment": Environment}
    OPTIONAL: ClassVar = ("environment",)

    format: str = COMPARISON_FORMAT
    configuration: dict
    environment: Environment | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def read(cls, path: Path) -> ComparisonFile:
        """The file at ``path``; one line naming it and the fix when it is not one."""
        try:
            found = cls.from_json(json.loads(path.read_text()))
        except (ValueError, RecordError, TypeError) as exc:
            raise FeatcacheError(
                f"{path} is not a featcache comparison.json ({exc}); choose another --out, or pass --overwrite"
            ) from exc
        if found.format != COMPARISON_FORMAT:
            raise FeatcacheError(f"{path} is of format {found.format!r}, not {COMPARISON_FORMAT}; choose another --out")
        return found


def sweep_configuration(cfg: CompareConfig, store: FeatureStore, device: torch.device) -> dict:
    """Everything that decides a sweep's runs, as JSON: the options (those of the report alone left out), the
    store's identity (its encoder's weights, dataset, views, dtype, the K of its cached tokens) and the device
    type, whose random streams differ."""
    options = {k: v for k, v in asdict(cfg).items() if k not in REPORT_OPTIONS}
    record = store.record
    identity = {
        "encoder_sha256": record.encoder.weights_sha256,
        "dataset": record.dataset.fingerprint,
        "views": record.views,
        "dtype": record.dtype,
    }
    if record.tail_tokens:
        identity["tail_tokens"] = record.tail_tokens
    return json.loads(json.dumps({**options, "store_identity": identity, "device_type": device.type}, default=str))


def _differences(old: dict, new: dict) -> str:
    """``seeds [0, 1] -> [0, 1, 2]; epochs 2 -> 3``: the first three entries that differ, and how many more."""
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    said = "; ".join(f"{k} {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:3])
    return said + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_folder(out: Path, configuration: dict, *, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier sweep of this ``configuration`` to resume (with ``overwrite`` too); refuses
    (before anything is written) one of another configuration, or one whose configuration is unknown or unreadable,
    unless ``overwrite`` (then replaced)."""
    path = Path(out) / COMPARISON_FILE
    fix = "choose another --out, or pass --overwrite to replace it"
    if not path.exists():
        found = [name for name in (*SWEEP_FILES, *SWEEP_FOLDERS) if (Path(out) / name).exists()]
        if found and not overwrite:
            raise FeatcacheError(
                f"{out} holds an earlier compare-e2e sweep ({found[0]}) whose configuration is not recorded; {fix}"
            )
        return False
    try:
        earlier = ComparisonFile.read(path)
    except FeatcacheError:
        if overwrite:
            return False
        raise
    if earlier.configuration == configuration:
        return True  # with --overwrite too: a rerun from OUT/config.toml resumes rather than deleting finished runs
    if not overwrite:
        raise FeatcacheError(
            f"{out} holds a compare-e2e sweep of another configuration "
            f"({_differences(earlier.configuration, configuration)}); {fix}"
        )
    return False


def claim_folder(out: Path, configuration: dict, *, environment: Environment, resume: bool) -> None:
    """Make ``out`` this sweep's: unless resuming, remove an earlier sweep's files (`SWEEP_FILES`, `SWEEP_FOLDERS`;
    nothing else), then write ``comparison.json``."""
    out = Path(out)
    if not resume:
        for name in SWEEP_FOLDERS:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in SWEEP_FILES:
            (out / name).unlink(missing_ok=True)
    write_comparison_file(out, configuration, environment)


def write_comparison_file(out: Path, configuration: dict, environment: Environment) -> None:
    """``OUT/comparison.json``, atomically."""
    write_json(
        Path(out) / COMPARISON_FILE, ComparisonFile(configuration=configuration, environment=environment).to_json()
    )


def finished_run(directory: Path, run_config: dict, *, cases: bool) -> tuple[RunResults, torch.Tensor | None] | None:
    """A run of a resumed sweep finished already: its results, and with ``cases`` its case masks; None when it
    must train (no results, another configuration, or its case masks missing)."""
    path = Path(directory) / "results.json"
    if not path.is_file():
        return None
    results = RunResults.read(path)
    if json.loads(json.dumps(results.config, default=str)) != json.loads(json.dumps(run_config, default=str)):
        return None
    if not cases:
        return results, None
    masks = Path(directory) / CASE_MASKS
    return (results, torch.from_numpy(np.load(masks))) if masks.is_file() else None


def write_case_masks(directory: Path, masks: torch.Tensor) -> None:
    """A case run's predicted masks of the case images (uint8 ``[n, S, S]``), for a resumed sweep's report."""
    with atomic_path(Path(directory) / CASE_MASKS) as tmp, open(tmp, "wb") as handle:
        np.save(handle, masks.cpu().numpy())
