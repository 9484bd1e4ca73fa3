"""PNG figures (matplotlib, no GUI backend): loss curves, metrics against size, the learning-rate grid, cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from featcache.core.io import atomic_path
from featcache.results.overlays import overlay
from featcache.results.records import RunResults
from featcache.results.stats import SELECTED, number_name
from featcache.results.study import STUDY_IOU


class _ModeColours(dict):
    """Each mode's colour; Tk and Pk (any k) get shades of teal and brown, darker with k."""

    def __missing__(self, mode: str) -> str:
        k = int(mode[1:]) if mode[1:].isdigit() else 1
        shades = {"T": ("#17becf", "#0e8a96", "#08565e"), "P": ("#c49c94", "#8c564b", "#5a372f")}
        return shades.get(mode[:1], ("#7f7f7f",) * 3)[min(k, 3) - 1]


MODE_COLOURS = _ModeColours({"E": "#d62728", "Es": "#ff7f0e", "F": "#1f77b4", "FI": "#9467bd", "C": "#2ca02c"})
MODE_MARKERS = {"E": "o", "Es": "D", "F": "s", "FI": "v", "C": "^"}
#: Two modes whose mean test metrics differ by less than this at every size are said to coincide.
COINCIDE_WITHIN = 5e-4
METRIC_TITLES = {"iou": "IoU", "dice": "Dice", "sensitivity": "Sensitivity", "specificity": "Specificity"}


def clipped_errors(means: list[float], spreads: list[float]) -> np.ndarray:
    """Error bars ``[2, n]`` (below, above) of ``means`` ± ``spreads``, cut at 0 and 1: a score cannot leave
    [0, 1], so neither may its interval."""
    m, e = np.asarray(means, dtype=float), np.asarray(spreads, dtype=float)
    return np.maximum(np.stack([m - np.clip(m - e, 0, 1), np.clip(m + e, 0, 1) - m]), 0)


def coinciding_modes(
    groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int]
) -> list[tuple[str, str]]:
    """Pairs of modes whose mean test IoU, Dice, sensitivity and specificity agree within `COINCIDE_WITHIN` at
    every size (as C and F do from a float32 store): drawn one over the other, one would vanish."""

    def means(mode: str) -> np.ndarray:
        return np.array(
            [[np.mean([getattr(r.test, k) for r in groups[(mode, s)]]) for k in METRIC_TITLES] for s in sizes]
        )

    table = {m: means(m) for m in modes}
    return [
        (a, b)
        for i, a in enumerate(modes)
        for b in modes[i + 1 :]
        if np.all(np.abs(table[a] - table[b]) < COINCIDE_WITHIN)
    ]


@dataclass
class Cases:
    """The case figure's test images: their ``ids``, uint8 ``images`` ``[n, 3, S, S]`` and ``masks`` ``[n, S, S]``,
    and per (mode, size) the first seed's predicted masks ``[n, S, S]`` uint8."""

    ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    predictions: dict[tuple[str, int], torch.Tensor]


def plot_loss_curve(
    train_loss: list[float],
    val_loss: list[float],
    *,
    best_epoch: int,
    path: Path,
    title: str,
    ylabel: str = "BCE loss",
) -> None:
    """Training and validation loss per epoch, the kept (best) epoch dashed."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, label="train", color="#1f77b4")
    ax.plot(epochs, val_loss, label="validation", color="#d62728")
    ax.axvline(best_epoch, linestyle="--", color="0.3", label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
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


def plot_iou_against_lr(
    series: dict[str, dict[float, tuple[float, float]]], path: Path, title: str, *, selected: dict[str, float]
) -> None:
    """Test IoU against the learning rate (log axis): per series ``{lr: (mean, std over seeds)}`` a line with
    error bars; per entry of ``selected`` (its label: the mean test IoU of runs selected on validation) a dashed
    level."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    for i, (label, by_lr) in enumerate(series.items()):
        xs = sorted(by_lr)
        ax.errorbar(
            xs,
            [by_lr[x][0] for x in xs],
            yerr=clipped_errors([by_lr[x][0] for x in xs], [by_lr[x][1] for x in xs]),
            marker="o",
            capsize=3,
            label=label,
            color=f"C{i % 10}",
        )
    for i, (label, level) in enumerate(selected.items()):
        ax.axhline(level, linestyle="--", color=f"{0.2 + 0.2 * (i % 3):.1f}", label=label)
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted({lr for by_lr in series.values() for lr in by_lr})
    ax.set_xticks(ticks, [number_name(lr) for lr in ticks])
    ax.set_xlabel("SGD learning rate")
    ax.set_ylabel("test IoU (mean ± std over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_grid(summary: dict, path: Path, title: str) -> None:
    """`train-decoder`'s grid: test IoU against the learning rate, one line per weight decay, and the mean test
    IoU of the runs selected on validation."""
    series: dict[str, dict[float, tuple[float, float]]] = {}
    for e in summary["grid"]:
        series.setdefault(f"weight decay {number_name(e['weight_decay'])}", {})[e["lr"]] = (
            e["mean"]["iou"],
            e["std"]["iou"],
        )
    selected = {f"{SELECTED} (per seed)": summary["selected_on_validation"]["mean"]["iou"]}
    plot_iou_against_lr(series, path, title, selected=selected)


def coinciding_words(pairs: list[tuple[str, str]]) -> str:
    """``E, F and C; Es and FI``: the modes of `coinciding_modes`' pairs, gathered into the groups that agree."""
    groups: list[list[str]] = []
    for a, b in pairs:
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            groups.append([a, b])
        else:
            group += [m for m in (a, b) if m not in group]
    return "; ".join(", ".join(g[:-1]) + f" and {g[-1]}" for g in groups)


def plot_metrics_vs_size(
    groups: dict[tuple[str, int], list[RunResults]],
    modes: list[str],
    sizes: list[int],
    *,
    path: Path,
    study: bool = False,
) -> list[tuple[str, str]]:
    """IoU, Dice, sensitivity and specificity against training-set size per mode, error bars = std over seeds cut
    to [0, 1]. Each mode is drawn slightly apart on the size axis with its own marker, so that modes that agree
    stay visible, and the figure names the pairs that coincide (returned, `coinciding_modes`). ``study``: the
    study's published IoU of E and F drawn too (only where its setting is reproduced)."""
    fig = Figure(figsize=(16, 4.4))
    axes = fig.subplots(1, len(METRIC_TITLES))
    xs = sorted(sizes)
    for ax, metric in zip(axes, METRIC_TITLES, strict=True):
        for i, mode in enumerate(modes):
            values = [[getattr(r.test, metric) for r in groups[(mode, s)]] for s in xs]
            ys = [float(np.mean(v)) for v in values]
            es = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
            shift = 1 + 0.04 * (i - (len(modes) - 1) / 2)  # apart on the log axis, the same for every size
            ax.errorbar(
                [x * shift for x in xs],
                ys,
                yerr=clipped_errors(ys, es),
                marker=MODE_MARKERS.get(mode, "o"),
                markerfacecolor="none" if i % 2 else None,
                capsize=3,
                label=mode,
                color=MODE_COLOURS[mode],
            )
        if metric == "iou" and study:
            _study_lines(ax, xs)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [str(s) for s in xs])
        ax.set_xlabel("training images")
        ax.set_title(METRIC_TITLES[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    pairs = coinciding_modes(groups, modes, xs)
    if pairs:
        fig.text(0.5, 0.01, f"{coinciding_words(pairs)} coincide (drawn side by side)", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.05 if pairs else 0, 1, 1))
    save_figure(fig, path)
    return pairs


def _study_lines(ax, xs: list[int]) -> None:
    """The study's published mean test IoU of E and F (theirs), dotted grey."""
    for mode, marker in (("E", "x"), ("F", "+")):
        theirs = [(s, STUDY_IOU[mode][s]) for s in xs if s in STUDY_IOU[mode]]
        if theirs:
            ax.plot(
                *zip(*theirs, strict=True),
                linestyle=":",
                marker=marker,
                color="0.5",
                label=f"study {mode} (theirs)",
            )


def plot_loss_curves(
    groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int], *, path: Path
) -> None:
    """Validation loss per epoch, one panel per size, a line per mode (first seed), kept epoch dotted."""
    xs = sorted(sizes, reverse=True)
    fig = Figure(figsize=(4 * len(xs), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(xs)))
    for ax, size in zip(axes, xs, strict=True):
        for mode in modes:
            run = groups[(mode, size)][0]
            # C dashed over F: from a float32 store with exact views they coincide, and F would vanish.
            ax.plot(
                range(1, len(run.history.val_loss) + 1),
                run.history.val_loss,
                color=MODE_COLOURS[mode],
                label=mode,
                linestyle="--" if mode == "C" else "-",
            )
            ax.axvline(run.best_epoch, color=MODE_COLOURS[mode], linestyle=":", alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(f"{size} training images (seed {groups[(modes[0], size)][0].seed})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation BCE")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_cases(cases: Cases, modes: list[str], sizes: list[int], *, path: Path) -> None:
    """Each case image across sizes (columns) and modes (rows): truth red, prediction green; a prediction that is
    all lesion or empty says so in words."""
    xs = sorted(sizes)
    ids = cases.ids
    rows = [(i, m) for i in range(len(ids)) for m in modes]
    fig = Figure(figsize=(2 * len(xs) + 1, 2 * len(rows)))
    axes = np.array(fig.subplots(len(rows), len(xs), squeeze=False))
    for r, (i, mode) in enumerate(rows):
        image = cases.images[i].permute(1, 2, 0).numpy()
        truth = cases.masks[i].numpy().astype(bool)
        for c, size in enumerate(xs):
            ax = axes[r, c]
            predicted = cases.predictions[(mode, size)][i].numpy().astype(bool)
            ax.imshow(overlay(image, predicted, truth))
            ax.set_xticks([])
            ax.set_yticks([])
            # An outline alone says nothing of these: a full mask is a green frame, an empty one no green at all.
            words = "all lesion" if predicted.all() else "empty prediction" if not predicted.any() else None
            if words:
                ax.text(
                    0.5,
                    0.5,
                    words,
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 2},
                )
            if r == 0:
                ax.set_title(f"{size} images")
            if c == 0:
                ax.set_ylabel(f"{ids[i]}\n{mode}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
