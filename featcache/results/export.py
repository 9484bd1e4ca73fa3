"""CSV files of runs: one row per run, and a grid's combinations with the choice on validation."""

from __future__ import annotations

import csv
from pathlib import Path

from featcache.core.io import atomic_path
from featcache.results.metrics import METRICS
from featcache.results.records import RunResults
from featcache.results.stats import SELECTED


def write_runs_csv(results: list[RunResults], path: Path, *, optimiser: bool = False) -> None:
    """One row per run: mode, size, seed (``optimiser``: its learning rate and weight decay), test metrics,
    best epoch, timings."""
    fields = ["mode", "size", "seed", *(("lr", "weight_decay") if optimiser else ()), *METRICS]
    fields += ["best_epoch", "train_seconds", "total_seconds", "augment", "device"]

    def row(r: RunResults) -> list:
        head = [r.mode, r.size, r.seed, *((r.lr, r.weight_decay) if optimiser else ())]
        tail = [r.best_epoch, r.train_seconds, r.total_seconds, r.augment, r.device]
        return [*head, *r.test.as_dict().values(), *tail]

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in results:
            writer.writerow(row(r))


def write_grid_csv(summary: dict, path: Path) -> None:
    """A row per (learning rate, weight decay) with mean and std over seeds, then the selection on validation
    (its learning rates and weight decays per seed, ``;``-separated)."""
    keys = [*METRICS, "best_epoch", "train_seconds"]
    fields = ["selection", "lr", "weight_decay", "n_runs", *(f"{k}_{s}" for k in keys for s in ("mean", "std"))]
    selected = summary["selected_on_validation"]
    rows = [["fixed", e["lr"], e["weight_decay"], e] for e in summary["grid"]]
    rows.append(
        [
            SELECTED,
            ";".join(str(c["lr"]) for c in selected["choices"]),
            ";".join(str(c["weight_decay"]) for c in selected["choices"]),
            selected,
        ]
    )
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for selection, lr, wd, e in rows:
            stats = [e[s][k] for k in keys for s in ("mean", "std")]
            writer.writerow([selection, lr, wd, e["n_runs"], *stats])
