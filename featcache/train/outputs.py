"""A run's folder: where a sweep writes a run, how a finished run is recognised (and kept), and what it writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featcache.core.errors import FeatcacheError
from featcache.core.io import torch_save
from featcache.results.figures import plot_loss_curve
from featcache.results.records import DecoderCheckpoint, RunResults
from featcache.results.stats import number_name
from featcache.train.config import RunKey


def run_dir(out: Path, seed: int, combination: str | None = None) -> Path:
    """``OUT/seed-K``, or in a grid ``OUT/COMBINATION/seed-K``."""
    return (out / combination if combination else out) / f"seed-{seed}"


def combination_name(lr: float, weight_decay: float) -> str:
    """The folder of one (learning rate, weight decay) of a grid: ``lr-2e-4_wd-1e-4``."""
    return f"lr-{number_name(lr)}_wd-{number_name(weight_decay)}"


def group_name(group: list[RunKey], grid: bool) -> str:
    """The resume file's name of a group of runs: its seeds, or in a grid its one run, or a digest."""
    if not grid:
        return "-".join(str(key.seed) for key in group)
    if len(group) == 1:
        return f"{combination_name(group[0].lr, group[0].weight_decay)}-seed-{group[0].seed}"
    runs = [[key.lr, key.weight_decay, key.seed] for key in group]
    return f"grid-{hashlib.sha256(json.dumps(runs).encode()).hexdigest()[:12]}"


def runs_label(group: list[RunKey], grid: bool) -> str:
    """``seeds 0-1`` or, in a grid, ``lr 2e-4 wd 1e-4 seed 0`` / ``12 runs of the grid``."""
    if not grid:
        seeds = [key.seed for key in group]
        return f"seed{'s' if len(seeds) > 1 else ''} {'-'.join(map(str, seeds))}"
    if len(group) == 1:
        key = group[0]
        return f"lr {number_name(key.lr)} wd {number_name(key.weight_decay)} seed {key.seed}"
    return f"{len(group)} runs of the grid"


def finished_run(directory: Path, identity: dict) -> RunResults | None:
    """The results of a finished run of the same identity in ``directory``; refuses one of another."""
    path = directory / "results.json"
    if not path.exists():
        return None
    results = RunResults.read(path)
    if results.store_identity != identity:
        raise FeatcacheError(
            f"{directory} holds a finished run of another configuration; choose another --out or delete it"
        )
    return results


def write_run(directory: Path, results: RunResults, checkpoint: DecoderCheckpoint | None) -> None:
    """results.json, the checkpoint (if any) and the loss curve of one run, each written atomically."""
    results.write(directory / "results.json")
    if checkpoint is not None:
        torch_save(checkpoint.to_dict(), directory / "decoder.pt")
    plot_loss_curve(
        results.history.train_loss,
        results.history.val_loss,
        best_epoch=results.best_epoch,
        path=directory / "loss_curve.png",
        title=f"{results.mode} · {results.size} images · seed {results.seed}",
    )
