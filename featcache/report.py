"""Tables, figures (matplotlib, PNG) and summaries of training runs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from featcache.io import atomic_path
from featcache.metrics import METRICS


SHORT_NAMES = {"iou": "IoU", "dice": "Dice", "sensitivity": "Sens", "specificity": "Spec", "accuracy": "Acc",
               "thresholded_jaccard": "TJ"}


def plot_loss_curve(history: dict[str, list[float]], best_epoch: int, path: Path, title: str) -> None:
    """Training and validation BCE per epoch, the kept (best) epoch dashed."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train", color="#1f77b4")
    ax.plot(epochs, history["val_loss"], label="validation", color="#d62728")
    ax.axvline(best_epoch, linestyle="--", color="0.3", label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("BCE loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> None:
    """Write a figure as PNG atomically (pyplot-free, so no GUI backend is ever touched)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def aggregate(results: list[dict]) -> dict:
    """Mean and sample std (ddof 1; 0 for one run) over runs of each test metric and of the timings."""
    keys = list(METRICS)
    values = {k: np.array([r["test"][k] for r in results], dtype=float) for k in keys}
    for timing in ("train_seconds", "total_seconds", "best_epoch"):
        values[timing] = np.array([r[timing] for r in results], dtype=float)
    ddof = 1 if len(results) > 1 else 0
    return {
        "n_runs": len(results),
        "seeds": [r["seed"] for r in results],
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=ddof)) for k, v in values.items()},
    }


def seeds_table(results: list[dict], summary: dict, title: str) -> Table:
    """A row per seed and a mean ± std row, for the test metrics and training time."""
    table = Table(title=title)
    table.add_column("seed", justify="right")
    for k in METRICS:
        table.add_column(SHORT_NAMES[k], justify="right")
    table.add_column("best epoch", justify="right")
    table.add_column("train s", justify="right")
    for r in results:
        table.add_row(str(r["seed"]), *(f"{r['test'][k]:.4f}" for k in METRICS), str(r["best_epoch"]), f"{r['train_seconds']:.1f}")
    mean, std = summary["mean"], summary["std"]
    table.add_row(
        "mean ± std",
        *(f"{mean[k]:.3f}±{std[k]:.3f}" for k in METRICS),
        f"{mean['best_epoch']:.0f}",
        f"{mean['train_seconds']:.1f} ± {std['train_seconds']:.1f}",
        style="bold",
    )
    return table


def write_runs_csv(results: list[dict], path: Path) -> None:
    """One row per run: mode, size, seed, test metrics, best epoch, timings."""
    fields = ["mode", "size", "seed", *METRICS, "best_epoch", "train_seconds", "total_seconds", "augment", "device"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in results:
            writer.writerow([r[k] if k in r else r["test"][k] for k in fields])
