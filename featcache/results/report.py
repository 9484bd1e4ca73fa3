"""The markdown report of a compare-e2e sweep: its tables, figures, paired differences and cases.

`write_report` writes ``report.md`` section by section (`_header`, `_iou_section`, `_time_section`,
`_pairs_section`, `lr_grid_section`, `_tail`), each returning its markdown lines; `ReportContext` says what the
sweep ran on and `Cases` holds the case figure's images and predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featcache.core.io import atomic_path
from featcache.models.record import EncoderRecord, WeightsSource
from featcache.results.export import write_runs_csv
from featcache.results.figures import Cases, plot_cases, plot_iou_against_lr, plot_loss_curves, plot_metrics_vs_size
from featcache.results.records import RunResults
from featcache.results.stats import PAIRS, SELECTED, group_runs, number_name, paired_difference, select_on_validation
from featcache.results.study import STUDY_IOU, STUDY_SECONDS
from featcache.store.schema import DatasetRecord


@dataclass(kw_only=True)
class ReportContext:
    """What a sweep ran on: the store (its path, test images, image size, encoder, dataset, extraction time), the
    encoder E and FI started from (``e_init``), the blocks read, the device, and the sweep's sizes, seeds, modes
    (with their descriptions), epochs (None: the protocol's), learning rates (``lr``: the one the modes compare
    at; ``grid_modes``: the modes that trained every one of ``lrs``) and augmentation."""

    store: str
    n_test: int
    image_size: int
    encoder: EncoderRecord
    e_init: WeightsSource
    layers: list[int]
    depth: int
    device: str
    dataset: DatasetRecord
    dataset_root: str | None
    extraction_seconds: float | None
    extraction_device: str | None
    augment: str
    modes: list[str]
    mode_descriptions: dict[str, str]
    sizes: list[int]
    seeds: list[int]
    epochs: int | None
    lr: float
    lrs: list[float]
    grid_modes: list[str]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (nan for one value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def lr_grid_section(results: list[RunResults], context: ReportContext, out: Path) -> list[str]:
    """The report's learning-rate grid: per grid mode a table of mean ± std test IoU per (size, learning rate)
    beside the runs selected on validation (per seed, the learning rate of lowest validation loss), and
    ``lr_grid.png``."""
    lines = [
        "",
        "## Learning-rate grid",
        "",
        f"{', '.join(context.grid_modes)} trained at every SGD learning rate of "
        f"{', '.join(number_name(lr) for lr in context.lrs)} (the other modes and the tables above at "
        f"{number_name(context.lr)}). *{SELECTED}*: per seed, the learning rate whose run reached the lowest "
        "validation loss, and that run's test IoU; test metrics choose nothing.",
    ]
    series: dict[str, dict[float, tuple[float, float]]] = {}
    selected: dict[str, float] = {}
    for mode in context.grid_modes:
        lines += [
            "",
            f"**{mode}**: test IoU (mean ± std over seeds)",
            "",
            "| size | " + " | ".join(f"lr {number_name(lr)}" for lr in context.lrs) + f" | {SELECTED} | chosen lr |",
            "|---|" + "---|" * (len(context.lrs) + 2),
        ]
        for size in sorted(context.sizes, reverse=True):
            runs = [r for r in results if r.mode == mode and r.size == size]
            cells = []
            for lr in context.lrs:
                mean, std = _mean_std([r.test.iou for r in runs if r.lr == lr])
                cells.append(f"{_fmt(mean)} ± {_fmt(std)}")
                series.setdefault(f"{mode} · {size} images", {})[lr] = (mean, 0.0 if np.isnan(std) else std)
            chosen = [select_on_validation([r for r in runs if r.seed == k]) for k in context.seeds]
            mean, std = _mean_std([r.test.iou for r in chosen])
            cells += [f"{_fmt(mean)} ± {_fmt(std)}", ", ".join(number_name(r.lr) for r in chosen)]
            selected[f"{mode} · {size} images: {SELECTED}"] = mean
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    plot_iou_against_lr(series, out / "lr_grid.png", "test IoU against the learning rate", selected=selected)
    lines += ["", "![test IoU against the learning rate](lr_grid.png)"]
    return lines


def write_report(results: list[RunResults], *, context: ReportContext, out: Path, cases: Cases) -> Path:
    """``OUT/report.md`` with its PNGs and ``results.csv``; returns the report's path.

    With a learning-rate grid (``context.grid_modes``), the tables and figures compare the modes at
    ``context.lr`` and `lr_grid_section` adds the grid."""
    write_runs_csv(results, out / "results.csv", optimiser=bool(context.grid_modes))
    grid_lines = lr_grid_section(results, context, out) if context.grid_modes else []
    # The store served every C run, the grid's too: its extraction time is shared among them all.
    n_c = sum(1 for r in results if r.mode == "C")
    compared = [r for r in results if r.lr == context.lr] if context.grid_modes else results
    groups = group_runs(compared)
    sizes = sorted(context.sizes, reverse=True)
    plot_metrics_vs_size(groups, context.modes, sizes, path=out / "metrics_vs_size.png")
    plot_loss_curves(groups, context.modes, sizes, path=out / "loss_curves.png")
    plot_cases(cases, context.modes, sizes, path=out / "cases.png")
    lines = [
        *_header(context, sizes),
        *_iou_section(groups, context.modes, sizes),
        *_time_section(groups, context, sizes=sizes, n_c=n_c),
        *_pairs_section(groups, context.modes, sizes),
        *_tail(grid_lines, len(cases.ids)),
    ]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines))
    return report


def _header(context: ReportContext, sizes: list[int]) -> list[str]:
    """The title, what the sweep ran on, the data and the modes."""
    blocks = ""
    if context.layers:
        plural = "s" if len(context.layers) > 1 else ""
        blocks = f"features of block{plural} {', '.join(map(str, context.layers))} of {context.depth}, "
    epochs = (
        f"epochs shortened to {context.epochs} for every size (the study's protocol uses 100–1200)."
        if context.epochs
        else "epochs and batch sizes from the study's protocol."
    )
    lr = f" SGD learning rate {context.lr} (the study's: 0.0002)." if context.lr != 2e-4 else ""
    dataset = context.dataset
    return [
        "# featcache compare-e2e report",
        "",
        f"Store `{context.store}`: {context.n_test} test images at {context.image_size} px, "
        f"encoder {context.encoder.arch} ({context.encoder.source.kind}), {blocks}runs on {context.device}. "
        f"Sizes {', '.join(map(str, sizes))}; seeds {', '.join(map(str, context.seeds))}; {epochs}{lr}",
        "",
        f"Data: `{context.dataset_root}` ({dataset.layout} layout, "
        + ", ".join(f"{k} {v}" for k, v in dataset.counts.items())
        + "). "
        + (dataset.split_note or "Official splits."),
        "",
        "Modes, all on the same seeded subsets, flips and protocol:",
        "",
        *[f"- **{m}**: {context.mode_descriptions[m]}" for m in context.modes],
        "",
        "Every number below is the mean over seeds; ± is the standard deviation over seeds. "
        "Columns marked *study* are the published figures (theirs, ISIC 2017 test set, RTX 4070 Ti Super), "
        "shown for orientation only: they are not from this run.",
    ]


def _iou_section(groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int]) -> list[str]:
    lines = [
        "",
        "## Test IoU",
        "",
        "| size | " + " | ".join(modes) + " | study E | study F |",
        "|---|" + "---|" * (len(modes) + 2),
    ]
    for s in sizes:
        cells = []
        for m in modes:
            mean, std = _mean_std([r.test.iou for r in groups[(m, s)]])
            cells.append(f"{_fmt(mean)} ± {_fmt(std)}")
        study = f" | {_fmt(STUDY_IOU['E'].get(s))} | {_fmt(STUDY_IOU['F'].get(s))} |"
        lines.append(f"| {s} | " + " | ".join(cells) + study)
    return [*lines, "", "![IoU, Dice and sensitivity against training-set size](metrics_vs_size.png)"]


def _time_section(
    groups: dict[tuple[str, int], list[RunResults]], context: ReportContext, *, sizes: list[int], n_c: int
) -> list[str]:
    """The study's Table 3, extended: seconds per run and mode, with the extraction's share and E's ratios."""
    modes = context.modes
    extraction = context.extraction_seconds
    share = extraction / n_c if extraction and n_c else None
    lines = [
        "",
        "## Training time (the study's Table 3, extended)",
        "",
        "Seconds of training steps per run (device synchronised; validation, checkpoints and extraction excluded), "
        "% saved and speed-up against E.",
    ]
    if any(r.group is not None for runs in groups.values() for r in runs):
        lines.append(
            "C runs of one size trained their seeds together as one grouped network; each run's time is the "
            "group's divided by the number of seeds."
        )
    if share is not None:
        lines.append(
            f"The store's extraction took {extraction:.1f} s ({context.extraction_device}); spread over the "
            f"{n_c} C runs that used it, that is {share:.2f} s per run, shown as *C+extract*."
        )
    header = ["size", *modes] + (["C+extract"] if share is not None and "C" in modes else [])
    if "E" in modes:
        header += [f"{m} saved vs E" for m in modes if m != "E"] + [f"{m} speed-up" for m in modes if m != "E"]
    header += ["study E", "study F"]
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for s in sizes:
        t = {m: float(np.mean([r.train_seconds for r in groups[(m, s)]])) for m in modes}
        row = [str(s), *(f"{t[m]:.2f}" for m in modes)]
        if share is not None and "C" in modes:
            row.append(f"{t['C'] + share:.2f}")
        if "E" in modes:
            row += [f"{100 * (1 - t[m] / t['E']):.1f} %" for m in modes if m != "E"]
            row += [f"{t['E'] / t[m]:.1f}x" for m in modes if m != "E"]
        row += [_fmt(STUDY_SECONDS["E"].get(s), 1), _fmt(STUDY_SECONDS["F"].get(s), 1)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _pairs_section(groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int]) -> list[str]:
    lines = [
        "",
        "## Paired differences in test IoU",
        "",
        "Each difference is taken between two modes on the same (size, seed) subset, then averaged over seeds; "
        "the interval is a 95 % Student t interval over seeds (– with one seed). An interval that excludes 0 "
        "means the difference is larger than the seed-to-seed noise.",
        "",
        "| size | difference | mean | 95 % interval |",
        "|---|---|---|---|",
    ]
    for s in sizes:
        for a, b in PAIRS:
            if a in modes and b in modes:
                d, lo, hi = paired_difference(
                    [r.test.iou for r in groups[(a, s)]], [r.test.iou for r in groups[(b, s)]]
                )
                lines.append(f"| {s} | {a} − {b} | {d:+.3f} | [{_fmt(lo)}, {_fmt(hi)}] |")
    return lines


def _tail(grid_lines: list[str], n_cases: int) -> list[str]:
    """Loss curves, the grid (if any), cases and the files written."""
    return [
        "",
        "## Loss curves",
        "",
        "Validation loss per epoch for the first seed (C dashed); the dotted line marks the kept epoch.",
        "",
        "![validation loss curves](loss_curves.png)",
        *grid_lines,
        "",
        "## Cases",
        "",
        f"{n_cases} test images, first seed: truth outlined red, prediction green.",
        "",
        "![case figures](cases.png)",
        "",
        "## Files",
        "",
        "- `results.csv`: one row per run; `runs/MODE/size-N/seed-K/results.json` (a grid mode's: "
        "`runs/MODE/size-N/lr-X/seed-K/`): each run in full, with its loss curve.",
        "",
    ]
