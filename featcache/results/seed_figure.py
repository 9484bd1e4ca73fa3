"""train-decoder's figure over its seeds: every seed's loss curves on one axis, and each seed's test metrics, so
that the spread over seeds is seen rather than summarised."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from featcache.results.degenerate import run_flags
from featcache.results.figures import save_figure
from featcache.results.records import RunResults

SEEDS_FIGURE = "seeds.png"


def plot_seeds(runs: list[RunResults], path: Path, *, title: str, labels: list[str] | None = None) -> None:
    """Left: training (dashed) and validation loss per epoch of every run, its kept epoch marked with a dot.
    Right: each run's test IoU and Dice, their means as lines; a degenerate run is circled in red.
    ``labels``: a name per run (default ``seed K``)."""
    labels = labels or [f"seed {r.seed}" for r in runs]
    fig = Figure(figsize=(11, 4))
    curves, scores = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour = f"C{i % 10}"
        epochs = np.arange(1, len(run.history.val_loss) + 1)
        curves.plot(epochs, run.history.train_loss, color=colour, linestyle="--", alpha=0.6)
        curves.plot(epochs, run.history.val_loss, color=colour, label=label)
        curves.plot([run.best_epoch], [run.history.val_loss[run.best_epoch - 1]], "o", color=colour)
    curves.set_yscale("log")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("BCE loss (validation solid, training dashed)")
    curves.legend(fontsize=8)
    curves.grid(alpha=0.3)
    xs = np.arange(len(runs))
    for metric, marker, offset in (("iou", "o", -0.1), ("dice", "s", 0.1)):
        values = [getattr(r.test, metric) for r in runs]
        scores.plot(xs + offset, values, marker, label=f"test {metric.replace('iou', 'IoU').replace('dice', 'Dice')}")
        scores.axhline(float(np.mean(values)), color=scores.lines[-1].get_color(), linewidth=0.8, alpha=0.6)
    flagged = [i for i, r in enumerate(runs) if run_flags(r)]
    if flagged:
        ys = [runs[i].test.iou for i in flagged]
        scores.plot(xs[flagged] - 0.1, ys, "o", markersize=14, markerfacecolor="none", color="red", label="degenerate")
    scores.set_xticks(xs, labels, rotation=30 if len(runs) > 6 else 0, fontsize=8)
    scores.set_ylim(0, 1)
    scores.set_ylabel("test score (mean over test images)")
    scores.legend(fontsize=8)
    scores.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
