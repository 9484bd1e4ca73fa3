"""Label selection in a comparison's report: each strategy's test IoU against random's on the same sizes, modes and
seeds, with the paired difference and its 95 % t interval (`paired_difference`, the machinery of the modes'
differences), a figure of test IoU against size with a line per strategy, ``selection.csv``, and the rich table
compare-e2e prints. Runs without a recorded selection are random's (every sweep's seeded subsets)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from featcache.core.io import atomic_path
from featcache.results.figures import save_figure
from featcache.results.metrics import METRICS
from featcache.results.records import RunResults
from featcache.results.stats import paired_difference

BASELINE = "random"


def strategy_of(run: RunResults) -> str:
    """The label selection that chose a run's training images (``random`` when none was recorded)."""
    return run.selection.strategy if run.selection is not None else BASELINE


def baseline_runs(results: list[RunResults]) -> list[RunResults]:
    """random's runs: the runs every other section of the report compares."""
    return [r for r in results if strategy_of(r) == BASELINE]


def strategies(results: list[RunResults]) -> list[str]:
    """The selections among ``results``, random first, then in the order they appear."""
    return list(dict.fromkeys([BASELINE, *(strategy_of(r) for r in results)]))


@dataclass
class StrategyRow:
    """One (size, mode, strategy): mean and sample std of test IoU over its seeds and, for a strategy other than
    random, the mean paired difference to random's run of the same seed with its 95 % t interval (nan with one
    pair) over the ``pairs`` seeds both have."""

    size: int
    mode: str
    strategy: str
    mean: float
    std: float
    difference: float | None = None
    low: float | None = None
    high: float | None = None
    pairs: int = 0


def compare_strategies(results: list[RunResults]) -> list[StrategyRow]:
    """Per size (largest first), mode and selection, random's row first, the strategies' paired with it by seed."""
    rows = []
    names = strategies(results)
    modes = list(dict.fromkeys(r.mode for r in results))
    for size in sorted({r.size for r in results}, reverse=True):
        for mode in modes:
            by_seed = {
                name: {r.seed: r.test.iou for r in results if (r.size, r.mode, strategy_of(r)) == (size, mode, name)}
                for name in names
            }
            base = by_seed[BASELINE]
            for name in names:
                ious = list(by_seed[name].values())
                if not ious:
                    continue
                row = StrategyRow(size, mode, name, float(np.mean(ious)), _std(ious))
                seeds = sorted(set(by_seed[name]) & set(base))
                if name != BASELINE and seeds:
                    row.difference, row.low, row.high = paired_difference(
                        [by_seed[name][k] for k in seeds], [base[k] for k in seeds]
                    )
                    row.pairs = len(seeds)
                rows.append(row)
    return rows


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def _fmt(x: float | None) -> str:
    return "–" if x is None or np.isnan(x) else f"{x:.3f}"


def _nesting_lines(results: list[RunResults]) -> list[str]:
    """One line per selection other than random: whether its subsets nest across sizes, as random's do."""
    lines = []
    for name in strategies(results)[1:]:
        runs = [r for r in results if strategy_of(r) == name]
        record = runs[0].selection
        if name == "file":
            lines.append(
                f"- **file** (`{record.file}`): size N trains on the file's first N ids for every seed (nested); "
                "the seeds vary only the training."
            )
        elif all(r.selection.nested for r in runs):
            lines.append(
                f"- **{name}**: nested — its order is chosen once per seed at the largest size and each size takes "
                "the first N, so its smaller subsets lie inside the larger ones, as random's do."
            )
        else:
            lines.append(
                f"- **{name}**: **not nested** — chosen afresh at each size (its clustering depends on the size), so "
                "its smaller subsets are not inside its larger ones; differences between its sizes mix the size "
                "with a different choice."
            )
    return lines


def selection_section(results: list[RunResults], *, lr: float, out: Path) -> list[str]:
    """The report's section on label selection (no lines when only random ran), at the learning rate ``lr`` the
    modes compare at; writes ``selection_vs_size.png`` and ``selection.csv`` (every run, with its selection)."""
    compared = [r for r in results if r.lr == lr]
    if len(strategies(compared)) < 2:
        return []
    rows = compare_strategies(compared)
    write_selection_csv(compared, out / "selection.csv")
    plot_iou_by_strategy(rows, out / "selection_vs_size.png")
    lines = [
        "",
        "## Label selection against random",
        "",
        "Which training images to label: each strategy chose them from the training split's cached features "
        "(identity view, mean over the patch grid, L2-normalised), its randomness (k-center's start, k-means' "
        "initialisation) set by the run's seed. A strategy's run and random's run of the same seed share the "
        "validation subset, initial weights and batch order; only the training images differ. Random's runs are "
        "the seeded subsets of every other table in this report. The difference is the strategy's test IoU minus "
        "random's, paired by seed, with a 95 % Student t interval over seeds (– with one seed); an interval that "
        "excludes 0 means the difference is larger than the seed-to-seed noise.",
        "",
        *_nesting_lines(compared),
        "",
        "| size | mode | selection | test IoU | − random | 95 % interval |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        iou = f"{_fmt(row.mean)} ± {_fmt(row.std)}"
        if row.strategy == BASELINE:
            lines.append(f"| {row.size} | {row.mode} | random | {iou} | | |")
        else:
            interval = f"[{_fmt(row.low)}, {_fmt(row.high)}]"
            lines.append(f"| {row.size} | {row.mode} | {row.strategy} | {iou} | {row.difference:+.3f} | {interval} |")
    return [
        *lines,
        "",
        "![test IoU against training-set size, one line per selection](selection_vs_size.png)",
        "",
        "`selection.csv`: every run of this comparison with its selection (random's included) and its test metrics.",
    ]


def plot_iou_by_strategy(rows: list[StrategyRow], path: Path) -> None:
    """Test IoU (mean ± std over seeds) against training-set size (log axis), a line per selection (each a little
    to the side of the size), a panel per mode."""
    modes = list(dict.fromkeys(r.mode for r in rows))
    names = list(dict.fromkeys(r.strategy for r in rows))
    fig = Figure(figsize=(5.5 * len(modes), 4))
    axes = np.atleast_1d(fig.subplots(1, len(modes), squeeze=False)[0])
    sizes = sorted({r.size for r in rows})
    for ax, mode in zip(axes, modes, strict=True):
        for i, name in enumerate(names):
            line = sorted((r for r in rows if (r.mode, r.strategy) == (mode, name)), key=lambda r: r.size)
            dodge = 1.04 ** (i - (len(names) - 1) / 2)  # side by side at each size, so the error bars stay apart
            ax.errorbar(
                [r.size * dodge for r in line],
                [r.mean for r in line],
                yerr=[0.0 if np.isnan(r.std) else r.std for r in line],
                marker="o",
                capsize=3,
                label=name,
                color="0.2" if name == BASELINE else f"C{i % 10}",
                linestyle="--" if name == BASELINE else "-",
            )
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("training images")
        ax.set_ylabel("test IoU (mean ± std over seeds)")
        ax.set_title(f"{mode}: label selection against random")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def write_selection_csv(results: list[RunResults], path: Path) -> None:
    """One row per run: its selection (strategy, seed, nested), mode, size, seed and test metrics."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["selection", "nested", "mode", "size", "seed", *METRICS])
        for r in results:
            nested = r.selection.nested if r.selection is not None else True
            writer.writerow([strategy_of(r), nested, r.mode, r.size, r.seed, *r.test.as_dict().values()])


def selection_table(results: list[RunResults]) -> Table:
    """The rich table of `compare_strategies`: per size, mode and selection, test IoU and the paired difference to
    random with its interval."""
    table = Table(title="label selection: test IoU (mean ± std over seeds), paired difference to random (95 % t)")
    for name, justify in (("size", "right"), ("mode", "left"), ("selection", "left")):
        table.add_column(name, justify=justify)
    for name in ("test IoU", "− random", "95 % interval"):
        table.add_column(name, justify="right")
    for row in compare_strategies(results):
        difference = "" if row.difference is None else f"{row.difference:+.3f}"
        interval = "" if row.difference is None else f"[{_fmt(row.low)}, {_fmt(row.high)}]"
        iou = f"{_fmt(row.mean)} ± {_fmt(row.std)}"
        table.add_row(str(row.size), row.mode, row.strategy, iou, difference, interval)
    return table
