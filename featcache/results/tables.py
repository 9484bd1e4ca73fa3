"""The rich tables the command line prints: runs per seed, a grid's combinations, modes against sizes."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from featcache.results.metrics import METRICS
from featcache.results.records import RunResults
from featcache.results.stats import SELECTED, group_runs, number_name

SHORT_NAMES = {
    "iou": "IoU",
    "dice": "Dice",
    "sensitivity": "Sens",
    "specificity": "Spec",
    "accuracy": "Acc",
    "thresholded_jaccard": "TJ",
}


def seeds_table(results: list[RunResults], summary: dict, title: str) -> Table:
    """A row per seed and a mean ± std row, for the test metrics and training time."""
    table = Table(title=title)
    # In a narrow terminal a cell folds onto a second line rather than losing digits to "…".
    table.add_column("seed", justify="right", overflow="fold")
    for k in METRICS:
        table.add_column(SHORT_NAMES[k], justify="right", overflow="fold")
    table.add_column("best epoch", justify="right", overflow="fold")
    table.add_column("train s", justify="right", overflow="fold")
    for r in results:
        table.add_row(
            str(r.seed), *(f"{v:.4f}" for v in r.test.as_dict().values()), str(r.best_epoch), f"{r.train_seconds:.1f}"
        )
    mean, std = summary["mean"], summary["std"]
    table.add_row(
        "mean ± std",
        *(f"{mean[k]:.3f}±{std[k]:.3f}" for k in METRICS),
        f"{mean['best_epoch']:.0f}",
        f"{mean['train_seconds']:.1f} ± {std['train_seconds']:.1f}",
        style="bold",
    )
    return table


def grid_table(summary: dict, title: str) -> Table:
    """A row per (learning rate, weight decay): mean ± std over seeds; then the selection on validation."""
    table = Table(title=title)
    for name in ("lr", "weight decay", *(SHORT_NAMES[k] for k in METRICS), "best epoch", "train s"):
        table.add_column(name, justify="right", overflow="fold")

    def cells(entry: dict) -> list[str]:
        mean, std = entry["mean"], entry["std"]
        return [
            *(f"{mean[k]:.3f}±{std[k]:.3f}" for k in METRICS),
            f"{mean['best_epoch']:.0f}",
            f"{mean['train_seconds']:.1f}",
        ]

    for entry in summary["grid"]:
        table.add_row(number_name(entry["lr"]), number_name(entry["weight_decay"]), *cells(entry))
    selected = summary["selected_on_validation"]
    table.add_row(SELECTED, "per seed", *cells(selected), style="bold")
    table.caption = f"{SELECTED}: " + "; ".join(
        f"seed {c['seed']} → lr {number_name(c['lr'])}, wd {number_name(c['weight_decay'])}"
        for c in selected["choices"]
    )
    return table


def compare_table(results: list[RunResults]) -> Table:
    """Mean ± std test IoU and mean training seconds per (size, mode)."""
    groups = group_runs(results)
    modes = list(dict.fromkeys(r.mode for r in results))
    table = Table(title="test IoU (mean ± std over seeds) · training seconds")
    table.add_column("size", justify="right")
    for m in modes:
        table.add_column(m, justify="right")
    for size in sorted({r.size for r in results}, reverse=True):
        cells = []
        for m in modes:
            ious = [r.test.iou for r in groups[(m, size)]]
            secs = sum(r.train_seconds for r in groups[(m, size)]) / len(ious)
            std = f"±{np.std(ious, ddof=1):.3f}" if len(ious) > 1 else ""
            cells.append(f"{np.mean(ious):.3f}{std} {secs:.1f}s")
        table.add_row(str(size), *cells)
    return table
