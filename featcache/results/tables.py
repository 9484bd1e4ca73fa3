"""The tables the command line prints: runs per seed, a grid's combinations, modes and sizes; each fits the
terminal (`featcache.results.fitted`), times are medians with their min–max, and flagged runs are marked."""

from __future__ import annotations

import numpy as np

from featcache.results.degenerate import DEGENERATE_RULE, count_degenerate, run_flags
from featcache.results.fitted import Column, FittedTable
from featcache.results.metrics import METRICS
from featcache.results.records import RunResults
from featcache.results.stats import SELECTED, group_runs, number_name
from featcache.results.timing import OUTLIER_MARK, OUTLIER_NOTE, time_spread

SHORT_NAMES = {
    "iou": "IoU",
    "dice": "Dice",
    "sensitivity": "Sens",
    "specificity": "Spec",
    "accuracy": "Acc",
    "thresholded_jaccard": "TJ",
}
#: Which metric columns a narrow terminal loses first (the highest first); 0: always shown.
DROP = {"thresholded_jaccard": 2, "accuracy": 1}
GRID_DROP = {"thresholded_jaccard": 4, "accuracy": 3, "dice": 2, "sensitivity": 1}
#: Marks a degenerate run (`featcache.results.degenerate`).
DEGENERATE_MARK = "*"


def _spread_cell(values: list[float], digits: int = 3) -> str:
    """The sample std of ``values``, or "–" for one value (a spread one seed cannot give)."""
    return f"{np.std(values, ddof=1):.{digits}f}" if len(values) > 1 else "–"


def _caption(runs: list[RunResults]) -> str:
    """What the marks of ``runs``' table mean, when one is used."""
    notes = []
    if any(run_flags(r) for r in runs):
        notes.append(f"{DEGENERATE_MARK} {DEGENERATE_RULE}.")
    if any(time_spread(group).outliers for group in group_runs(runs).values()):
        notes.append(OUTLIER_NOTE + ".")
    return " ".join(notes)


def seeds_table(results: list[RunResults], summary: dict, title: str) -> FittedTable:
    """A row per seed, then the mean and std over seeds of each test metric and the median and min–max of the
    training seconds (one seed: "–" for the spread); a degenerate seed is marked, and so is an outlier time.
    Narrow terminals lose the thresholded Jaccard, then the accuracy column."""
    mean, std = summary["mean"], summary["std"]
    times = time_spread(results)
    single = len(results) < 2
    summary_rows = ["mean", "std", "median", "min–max"]
    seeds = [f"{r.seed}{DEGENERATE_MARK if run_flags(r) else ''}" for r in results]
    columns = [Column("seed", [*seeds, *summary_rows])]
    for k in METRICS:
        cells = [f"{r.test.as_dict()[k]:.4f}" for r in results]
        columns.append(
            Column(
                SHORT_NAMES[k],
                [*cells, f"{mean[k]:.3f}", "–" if single else f"{std[k]:.3f}", "", ""],
                drop=DROP.get(k, 0),
            )
        )
    epochs = [r.best_epoch for r in results]
    columns.append(Column("epoch", [*map(str, epochs), "", "", "", "–" if single else f"{min(epochs)}–{max(epochs)}"]))
    seconds = [f"{r.train_seconds:.1f}{OUTLIER_MARK if r.seed in times.outliers else ''}" for r in results]
    columns.append(Column("train s", [*seconds, "", "", f"{times.median:.1f}", times.spread(1)]))
    caption = f"epoch: the kept epoch (lowest validation loss). {_caption(results)}".strip()
    n = len(results)
    return FittedTable(columns, title=title, caption=caption, bold=tuple(range(n, n + len(summary_rows))))


def _median_cell(entry: dict) -> str:
    """``2.0 (1.0–3.0)``: an `aggregate`'s median training seconds and their min–max (``(–)`` for one run)."""
    times = entry["train_seconds"]
    spread = "–" if entry["n_runs"] < 2 else f"{times['min']:.1f}–{times['max']:.1f}"
    return f"{times['median']:.1f} ({spread}){OUTLIER_MARK if times['outliers'] else ''}"


def grid_table(summary: dict, title: str) -> FittedTable:
    """A row per (learning rate, weight decay): mean ± std over seeds; then the selection on validation. Narrow
    terminals lose the thresholded Jaccard, accuracy, Dice and sensitivity columns, in that order. Training
    seconds: median (min–max) over seeds."""
    entries = [*summary["grid"], summary["selected_on_validation"]]
    selected = summary["selected_on_validation"]

    def spread(entry: dict, k: str) -> str:
        return f"{entry['mean'][k]:.3f}±{entry['std'][k]:.3f}" if entry["n_runs"] > 1 else f"{entry['mean'][k]:.3f}±–"

    columns = [
        Column("lr", [*(number_name(e["lr"]) for e in summary["grid"]), SELECTED], words=True),
        Column("weight decay", [*(number_name(e["weight_decay"]) for e in summary["grid"]), "per seed"], words=True),
        *(Column(SHORT_NAMES[k], [spread(e, k) for e in entries], drop=GRID_DROP.get(k, 0)) for k in METRICS),
        Column("train s", [_median_cell(e) for e in entries]),
    ]
    caption = f"{SELECTED}: " + "; ".join(
        f"seed {c['seed']} → lr {number_name(c['lr'])}, wd {number_name(c['weight_decay'])}"
        for c in selected["choices"]
    )
    return FittedTable(columns, title=title, caption=caption, bold=(len(entries) - 1,))


def compare_table(results: list[RunResults]) -> FittedTable:
    """A row per (size, mode): test IoU's mean and std over seeds, the training seconds' median and min–max over
    seeds, and its flags (degenerate runs, an outlier time)."""
    groups = group_runs(results)
    modes = list(dict.fromkeys(r.mode for r in results))
    rows = []
    for size in sorted({r.size for r in results}, reverse=True):
        for mode in modes:
            runs = groups[(mode, size)]
            ious = [r.test.iou for r in runs]
            times = time_spread(runs)
            flags = []
            if count_degenerate(runs):
                flags.append(f"{count_degenerate(runs)}/{len(runs)} degenerate")
            if times.outliers:
                flags.append(f"outlier seed {', '.join(map(str, times.outliers))}")
            cells = [str(size), mode, f"{np.mean(ious):.3f}", _spread_cell(ious)]
            rows.append([*cells, f"{times.median:.2f}{times.mark}", times.spread(), "; ".join(flags)])
    headers = ["size", "mode", "IoU", "std", "train s", "min–max", "flags"]
    columns = [Column(h, [row[i] for row in rows], words=h == "flags") for i, h in enumerate(headers)]
    columns[1].justify = columns[-1].justify = "left"
    title = "test IoU (mean, std over seeds) · training seconds (median, min–max over seeds)"
    return FittedTable(columns, title=title, caption=_caption(results))
