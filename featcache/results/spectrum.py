"""The report's spectrum between frozen and end to end: test IoU against training seconds per sample and against
trainable parameters for C, the Tk, the Pk, Es and E at each size (``spectrum.png``), with each Tk and Pk's paired
differences in test IoU against C and E."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from featcache.results.figures import MODE_COLOURS, save_figure
from featcache.results.records import RunResults
from featcache.results.stats import paired_difference

#: The spectrum's ends, from frozen to end to end; the Tk and Pk go between C and Es, by k.
ENDS = ("C", "Es", "E")


def _blocks(mode: str) -> int | None:
    """k of a Tk or Pk mode's name, else None."""
    return int(mode[1:]) if mode[:1] in ("T", "P") and mode[1:].isdigit() else None


def spectrum_modes(modes: list[str]) -> list[str]:
    """The modes of ``modes`` on the spectrum, in order: C, the Tk by k, the Pk by k, Es, E; empty without a Tk or
    Pk (no spectrum to show)."""
    tops = sorted((m for m in modes if _blocks(m)), key=lambda m: (m[0] != "T", _blocks(m)))
    if not tops:
        return []
    return [m for m in ENDS[:1] if m in modes] + tops + [m for m in ENDS[1:] if m in modes]


def seconds_per_sample(run: RunResults) -> float:
    """Training seconds per sample and epoch: the run's cost, comparable across sizes."""
    return run.train_seconds / (run.epochs * run.size)


def _points(runs: list[RunResults]) -> tuple[float, float, float, float]:
    """Mean seconds per sample, mean trainable parameters (nan when not recorded), mean and std test IoU."""
    ious = [r.test.iou for r in runs]
    params = [r.trainable_parameters for r in runs if r.trainable_parameters]
    std = float(np.std(ious, ddof=1)) if len(ious) > 1 else 0.0
    return (
        float(np.mean([seconds_per_sample(r) for r in runs])),
        float(np.mean(params)) if params else float("nan"),
        float(np.mean(ious)),
        std,
    )


def plot_spectrum(
    groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int], *, path: Path
) -> None:
    """Two panels, test IoU (mean ± std over seeds) against training seconds per sample and against trainable
    parameters (log axes): per size, a line from C through the Tk to Es and E; the Pk as open markers."""
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 2)
    styles = ("-", "--", ":", "-.")
    for i, size in enumerate(sorted(sizes, reverse=True)):
        points = {m: _points(groups[(m, size)]) for m in modes}
        line = [m for m in modes if not m.startswith("P")]
        for ax, column in zip(axes, (0, 1), strict=True):
            xs = [points[m][column] for m in line]
            ax.plot(xs, [points[m][2] for m in line], linestyle=styles[i % 4], color="0.6", label=f"{size} images")
            for m in modes:
                x, y, err = points[m][column], points[m][2], points[m][3]
                open_marker = m.startswith("P")
                ax.errorbar(
                    [x],
                    [y],
                    yerr=[err],
                    marker="s" if open_marker else "o",
                    mfc="none" if open_marker else MODE_COLOURS[m],
                    color=MODE_COLOURS[m],
                    capsize=3,
                    label=m if i == 0 else None,
                )
    for ax, label in zip(axes, ("training seconds per sample and epoch", "trainable parameters"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test IoU (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.suptitle("between frozen (C) and end to end (E): the encoder's last k blocks trained (Tk from tokens, Pk)")
    fig.tight_layout()
    save_figure(fig, path)


def spectrum_section(
    groups: dict[tuple[str, int], list[RunResults]], modes: list[str], sizes: list[int], *, out: Path
) -> list[str]:
    """The report's spectrum section and ``out/spectrum.png``; no lines without a Tk or Pk mode."""
    ordered = spectrum_modes(modes)
    if not ordered:
        return []
    sizes = sorted(sizes, reverse=True)
    plot_spectrum(groups, ordered, sizes, path=out / "spectrum.png")
    lines = [
        "",
        "## Between frozen and end to end",
        "",
        "Tk trains the encoder's last k blocks and final norm with the decoder from the store's cached tokens; Pk "
        "trains the same network recomputed from the images (the blocks below frozen). Cost is training seconds per "
        "sample and epoch; what trains is the decoder's parameters and the encoder's (all of E's and Es', the last "
        "k blocks' or their LoRA adapters' for Tk and Pk).",
        "",
        "![test IoU against training cost and trainable parameters](spectrum.png)",
        "",
        "| size | mode | s per sample | trainable parameters | test IoU |",
        "|---|---|---|---|---|",
    ]
    for s in sizes:
        for m in ordered:
            seconds, params, iou, std = _points(groups[(m, s)])
            count = "–" if np.isnan(params) else f"{params:,.0f}"
            lines.append(f"| {s} | {m} | {seconds:.2e} | {count} | {iou:.3f} ± {std:.3f} |")
    lines += [
        "",
        "Paired differences in test IoU against C and E (same subsets and seeds; 95 % Student t interval):",
        "",
        "| size | difference | mean | 95 % interval |",
        "|---|---|---|---|",
    ]
    for s in sizes:
        for m in (m for m in ordered if _blocks(m)):
            for end in (e for e in ("C", "E") if e in ordered):
                d, lo, hi = paired_difference(
                    [r.test.iou for r in groups[(m, s)]], [r.test.iou for r in groups[(end, s)]]
                )
                interval = "–" if np.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"
                lines.append(f"| {s} | {m} − {end} | {d:+.3f} | {interval} |")
    return lines
