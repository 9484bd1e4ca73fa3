"""The markdown report of a compare-e2e sweep: its tables, figures, paired differences and cases.

`write_report` writes ``report.md`` section by section (`_header`, `_iou_section`, then
`featcache.results.report_sections`' `time_section` and `degenerate_section`, `_pairs_section`, `lr_grid_section`,
`_tail`), each returning its markdown lines; `ReportContext` says what the sweep ran on and `Cases` holds the case
figure's images and predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featcache.core.io import atomic_path
from featcache.core.machine import Environment
from featcache.models.naming import encoder_words
from featcache.models.record import EncoderRecord, WeightsSource
from featcache.results.export import write_runs_csv
from featcache.results.figures import (
    COINCIDE_WITHIN,
    Cases,
    coinciding_words,
    plot_cases,
    plot_iou_against_lr,
    plot_loss_curves,
    plot_metrics_vs_size,
)
from featcache.results.records import RunResults
from featcache.results.report_sections import degenerate_section, encoder_lines, iou_cell, time_section
from featcache.results.selection_report import baseline_runs, selection_section
from featcache.results.spectrum import spectrum_section
from featcache.results.stats import PAIRS, SELECTED, group_runs, number_name, paired_difference, select_on_validation
from featcache.results.study import STUDY_IOU
from featcache.store.schema import DatasetRecord


@dataclass(kw_only=True)
class ReportContext:
    """What a sweep ran on: the store (its path, test images, image size, encoder, dataset, extraction time), the
    encoder E and FI started from (``e_init``), the blocks read, the device, and the sweep's sizes, seeds, modes
    (with their descriptions), epochs (None: the protocol's), learning rates (``lr``: the one the modes compare
    at; ``grid_modes``: the modes that trained every one of ``lrs``) and augmentation. ``init_encoder``: the record
    of the encoder E and FI started from; ``not_study``: why the store is not the study's setting (empty: it is);
    ``study_lines``: the study's published figures shown whatever the setting; ``environment``: the machine and
    its load at the sweep's start and end."""

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
    init_encoder: EncoderRecord | None = None
    not_study: list[str] = field(default_factory=list)
    study_lines: bool = False
    environment: Environment | None = None

    @property
    def study(self) -> bool:
        """Whether the study's published figures are shown: in its setting, or when asked for."""
        return self.study_lines or not self.not_study


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
    ``context.lr`` and `lr_grid_section` adds the grid. With label selections, every section but
    `selection_section` reads random's runs."""
    selection_lines = selection_section(results, lr=context.lr, out=out)
    results = baseline_runs(results)
    write_runs_csv(results, out / "results.csv", optimiser=bool(context.grid_modes))
    grid_lines = lr_grid_section(results, context, out) if context.grid_modes else []
    compared = [r for r in results if r.lr == context.lr] if context.grid_modes else results
    groups = group_runs(compared)
    sizes = sorted(context.sizes, reverse=True)
    pairs = plot_metrics_vs_size(groups, context.modes, sizes, path=out / "metrics_vs_size.png", study=context.study)
    plot_loss_curves(groups, context.modes, sizes, path=out / "loss_curves.png")
    plot_cases(cases, context.modes, sizes, path=out / "cases.png")
    extraction = context.extraction_seconds
    lines = [
        *_header(context, sizes),
        *_iou_section(groups, context, sizes, pairs=pairs),
        *time_section(
            groups,
            modes=context.modes,
            sizes=sizes,
            extraction=(extraction, context.extraction_device) if extraction else None,
            study=context.study,
            environment=context.environment,
        ),
        *degenerate_section(groups, modes=context.modes, sizes=sizes),
        *_pairs_section(groups, context.modes, sizes),
        *spectrum_section(groups, context.modes, sizes, out=out),
        *selection_lines,
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
        f"encoder {encoder_words(context.encoder)}, {blocks}runs on {context.device}. "
        f"Sizes {', '.join(map(str, sizes))}; seeds {', '.join(map(str, context.seeds))}; {epochs}{lr}",
        "",
        f"Data: `{context.dataset_root}` ({dataset.layout} layout, "
        + ", ".join(f"{k} {v}" for k, v in dataset.counts.items())
        + "). "
        + (dataset.split_note or "Official splits."),
        "",
        *encoder_lines(context.encoder, context.init_encoder),
        "",
        "Modes, all on the same seeded subsets, flips and protocol:",
        "",
        *[f"- **{m}**: {context.mode_descriptions[m]}" for m in context.modes],
        "",
        "Scores are means over seeds; ± is the standard deviation over seeds (– with one seed). Times are medians "
        "over seeds with their min–max.",
        "",
        _study_sentence(context),
    ]


def _study_sentence(context: ReportContext) -> str:
    """Whether the study's published figures are shown, and why."""
    if not context.study:
        return (
            "The study's published figures are not shown: this is not its setting ("
            + "; ".join(context.not_study)
            + "), so they would compare unlike with unlike. `--study-lines` shows them anyway."
        )
    why = (
        ""
        if not context.not_study
        else f" (shown on request, though this is not its setting: {'; '.join(context.not_study)})"
    )
    return (
        "Columns and lines marked *study* are the published figures (theirs, ISIC 2017 test set, RTX 4070 Ti Super), "
        f"shown for orientation only: they are not from this run{why}."
    )


def _iou_section(
    groups: dict[tuple[str, int], list[RunResults]],
    context: ReportContext,
    sizes: list[int],
    *,
    pairs: list[tuple[str, str]],
) -> list[str]:
    """Mean ± std test IoU per size and mode (degenerate runs counted), the study's in its setting, the figure."""
    modes, study = context.modes, context.study
    lines = [
        "",
        "## Test IoU",
        "",
        "| size | " + " | ".join(modes) + (" | study E | study F |" if study else " |"),
        "|---|" + "---|" * (len(modes) + (2 if study else 0)),
    ]
    for s in sizes:
        cells = [iou_cell(groups[(m, s)]) for m in modes]
        theirs = f" | {_fmt(STUDY_IOU['E'].get(s))} | {_fmt(STUDY_IOU['F'].get(s))} |" if study else " |"
        lines.append(f"| {s} | " + " | ".join(cells) + theirs)
    lines += ["", "![IoU, Dice, sensitivity and specificity against training-set size](metrics_vs_size.png)"]
    if pairs:
        lines += [
            "",
            f"Modes that coincide (every mean score within {COINCIDE_WITHIN:g} at every size): "
            f"{coinciding_words(pairs)}; the figure draws each mode slightly apart on the size axis so that all show.",
        ]
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
        "`runs/MODE/size-N/lr-X/seed-K/`; comparing label selections: `runs/MODE/size-N/[lr-X/]SELECTION/seed-K/`): "
        "each run in full, with its loss curve.",
        "",
    ]
