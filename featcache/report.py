"""Tables, figures (matplotlib, PNG) and summaries of training runs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from rich.table import Table

from featcache.io import atomic_path
from featcache.metrics import METRICS
from featcache.modes import MODES
from featcache.overlays import overlay

SHORT_NAMES = {
    "iou": "IoU",
    "dice": "Dice",
    "sensitivity": "Sens",
    "specificity": "Spec",
    "accuracy": "Acc",
    "thresholded_jaccard": "TJ",
}


def plot_loss_curve(
    history: dict[str, list[float]], best_epoch: int, path: Path, title: str, ylabel: str = "BCE loss"
) -> None:
    """Training and validation loss per epoch, the kept (best) epoch dashed."""
    fig = Figure(figsize=(6.4, 4))
    ax = fig.subplots()
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.plot(epochs, history["train_loss"], label="train", color="#1f77b4")
    ax.plot(epochs, history["val_loss"], label="validation", color="#d62728")
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
    # In a narrow terminal a cell folds onto a second line rather than losing digits to "…".
    table.add_column("seed", justify="right", overflow="fold")
    for k in METRICS:
        table.add_column(SHORT_NAMES[k], justify="right", overflow="fold")
    table.add_column("best epoch", justify="right", overflow="fold")
    table.add_column("train s", justify="right", overflow="fold")
    for r in results:
        table.add_row(
            str(r["seed"]), *(f"{r['test'][k]:.4f}" for k in METRICS), str(r["best_epoch"]), f"{r['train_seconds']:.1f}"
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


def write_runs_csv(results: list[dict], path: Path, optimiser: bool = False) -> None:
    """One row per run: mode, size, seed (``optimiser``: its learning rate and weight decay), test metrics,
    best epoch, timings."""
    fields = ["mode", "size", "seed", *(("lr", "weight_decay") if optimiser else ()), *METRICS]
    fields += ["best_epoch", "train_seconds", "total_seconds", "augment", "device"]

    def cell(r: dict, k: str):
        return r[k] if k in r else r["optimiser"][k] if k in ("lr", "weight_decay") else r["test"][k]

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for r in results:
            writer.writerow([cell(r, k) for k in fields])


# ----- hyperparameter grids -------------------------------------------------------------------

SELECTED = "selected on validation"


def number_name(x: float) -> str:
    """A learning rate or weight decay as folder names and tables write it: ``2e-4``, ``2.5e-4``, ``1e0``."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def select_on_validation(runs: list[dict]) -> dict:
    """Of one seed's runs over a grid, the one of lowest validation loss (the first of equals); test metrics
    choose nothing."""
    return min(runs, key=lambda r: r["best_val_loss"])


def grid_summary(results: list[dict], combinations: list[tuple[float, float]], seeds: list[int]) -> dict:
    """Each (learning rate, weight decay)'s `aggregate` over seeds, and per seed the combination selected on
    validation with its test metrics, aggregated over seeds too."""
    by_combination: dict[tuple[float, float], list[dict]] = {}
    for r in results:
        by_combination.setdefault((r["optimiser"]["lr"], r["optimiser"]["weight_decay"]), []).append(r)
    chosen = [select_on_validation([r for r in results if r["seed"] == seed]) for seed in seeds]
    return {
        "lrs": list(dict.fromkeys(lr for lr, _ in combinations)),
        "weight_decays": list(dict.fromkeys(wd for _, wd in combinations)),
        "grid": [{"lr": lr, "weight_decay": wd, **aggregate(by_combination[(lr, wd)])} for lr, wd in combinations],
        "selected_on_validation": {
            "criterion": "per seed, the combination of lowest validation loss; test metrics choose nothing",
            "choices": [
                {
                    "seed": r["seed"],
                    "lr": r["optimiser"]["lr"],
                    "weight_decay": r["optimiser"]["weight_decay"],
                    "best_val_loss": r["best_val_loss"],
                    "test": r["test"],
                }
                for r in chosen
            ],
            **aggregate(chosen),
        },
    }


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


def plot_iou_against_lr(
    series: dict[str, dict[float, tuple[float, float]]], path: Path, title: str, selected: dict[str, float]
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
            yerr=[by_lr[x][1] for x in xs],
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
    plot_iou_against_lr(series, path, title, selected)


# ----- compare-e2e report ---------------------------------------------------------------------

#: The study's reported mean test IoU and training seconds (RTX 4070 Ti Super), theirs not ours.
STUDY_IOU = {
    "E": {2000: 0.670, 160: 0.640, 80: 0.633, 40: 0.580, 20: 0.527, 10: 0.497},
    "F": {2000: 0.630, 160: 0.634, 80: 0.610, 40: 0.587, 20: 0.539, 10: 0.507},
}
STUDY_SECONDS = {
    "E": {2000: 1638.6, 160: 347.6, 80: 293.6, 40: 260.4, 20: 275.0, 10: 175.6},
    "F": {2000: 732.7, 160: 178.2, 80: 151.8, 40: 148.4, 20: 151.5, 10: 93.9},
}
MODE_COLOURS = {"E": "#d62728", "Es": "#ff7f0e", "F": "#1f77b4", "FI": "#9467bd", "C": "#2ca02c"}
#: Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (normal beyond).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
PAIRS = (("C", "F"), ("F", "E"), ("C", "E"), ("Es", "E"), ("FI", "E"), ("F", "FI"), ("Es", "F"))


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired seeds and its 95 % t-interval (nan bounds for one pair)."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = t975(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def group_runs(results: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Runs by (mode, size), each list sorted by seed."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        groups.setdefault((r["mode"], r["size"]), []).append(r)
    return groups


def compare_table(results: list[dict]) -> Table:
    """Mean ± std test IoU and mean training seconds per (size, mode)."""
    groups = group_runs(results)
    modes = list(dict.fromkeys(r["mode"] for r in results))
    table = Table(title="test IoU (mean ± std over seeds) · training seconds")
    table.add_column("size", justify="right")
    for m in modes:
        table.add_column(m, justify="right")
    for size in sorted({r["size"] for r in results}, reverse=True):
        cells = []
        for m in modes:
            ious = [r["test"]["iou"] for r in groups[(m, size)]]
            secs = sum(r["train_seconds"] for r in groups[(m, size)]) / len(ious)
            std = f"±{np.std(ious, ddof=1):.3f}" if len(ious) > 1 else ""
            cells.append(f"{np.mean(ious):.3f}{std} {secs:.1f}s")
        table.add_row(str(size), *cells)
    return table


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def plot_metrics_vs_size(groups, modes, sizes, path: Path) -> None:
    """IoU, Dice and sensitivity against training-set size per mode, error bars = std over seeds."""
    fig = Figure(figsize=(13, 4))
    axes = fig.subplots(1, 3)
    xs = sorted(sizes)
    for ax, metric in zip(axes, ("iou", "dice", "sensitivity"), strict=True):
        for mode in modes:
            ys = [np.mean([r["test"][metric] for r in groups[(mode, s)]]) for s in xs]
            es = [
                np.std([r["test"][metric] for r in groups[(mode, s)]], ddof=1) if len(groups[(mode, s)]) > 1 else 0
                for s in xs
            ]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=mode, color=MODE_COLOURS[mode])
        if metric == "iou":
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
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs, [str(s) for s in xs])
        ax.set_xlabel("training images")
        ax.set_title({"iou": "IoU", "dice": "Dice", "sensitivity": "Sensitivity"}[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_loss_curves(groups, modes, sizes, path: Path) -> None:
    """Validation loss per epoch, one panel per size, a line per mode (first seed), kept epoch dotted."""
    xs = sorted(sizes, reverse=True)
    fig = Figure(figsize=(4 * len(xs), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(xs)))
    for ax, size in zip(axes, xs, strict=True):
        for mode in modes:
            run = groups[(mode, size)][0]
            # C dashed over F: from a float32 store with exact views they coincide, and F would vanish.
            ax.plot(
                range(1, len(run["history"]["val_loss"]) + 1),
                run["history"]["val_loss"],
                color=MODE_COLOURS[mode],
                label=mode,
                linestyle="--" if mode == "C" else "-",
            )
            ax.axvline(run["best_epoch"], color=MODE_COLOURS[mode], linestyle=":", alpha=0.6)
        ax.set_yscale("log")
        ax.set_title(f"{size} training images (seed {groups[(modes[0], size)][0]['seed']})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation BCE")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def plot_cases(case_data: dict, modes, sizes, path: Path) -> None:
    """Each case image across sizes (columns) and modes (rows): truth red, prediction green."""

    xs = sorted(sizes)
    ids = case_data["ids"]
    rows = [(i, m) for i in range(len(ids)) for m in modes]
    fig = Figure(figsize=(2 * len(xs) + 1, 2 * len(rows)))
    axes = np.array(fig.subplots(len(rows), len(xs), squeeze=False))
    for r, (i, mode) in enumerate(rows):
        image = case_data["images"][i].permute(1, 2, 0).numpy()
        truth = case_data["masks"][i].numpy().astype(bool)
        for c, size in enumerate(xs):
            ax = axes[r, c]
            ax.imshow(overlay(image, case_data["predictions"][(mode, size)][i].numpy().astype(bool), truth))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{size} images")
            if c == 0:
                ax.set_ylabel(f"{ids[i]}\n{mode}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def lr_grid_section(results: list[dict], context: dict, out: Path) -> list[str]:
    """The report's learning-rate grid: per grid mode a table of mean ± std test IoU per (size, learning rate)
    beside the runs selected on validation (per seed, the learning rate of lowest validation loss), and
    ``lr_grid.png``."""
    lines = [
        "",
        "## Learning-rate grid",
        "",
        f"{', '.join(context['grid_modes'])} trained at every SGD learning rate of "
        f"{', '.join(number_name(lr) for lr in context['lrs'])} (the other modes and the tables above at "
        f"{number_name(context['lr'])}). *{SELECTED}*: per seed, the learning rate whose run reached the lowest "
        "validation loss, and that run's test IoU; test metrics choose nothing.",
    ]
    series: dict[str, dict[float, tuple[float, float]]] = {}
    selected: dict[str, float] = {}
    for mode in context["grid_modes"]:
        lines += [
            "",
            f"**{mode}**: test IoU (mean ± std over seeds)",
            "",
            "| size | " + " | ".join(f"lr {number_name(lr)}" for lr in context["lrs"]) + f" | {SELECTED} | chosen lr |",
            "|---|" + "---|" * (len(context["lrs"]) + 2),
        ]
        for size in sorted(context["sizes"], reverse=True):
            runs = [r for r in results if r["mode"] == mode and r["size"] == size]
            cells = []
            for lr in context["lrs"]:
                ious = [r["test"]["iou"] for r in runs if r["optimiser"]["lr"] == lr]
                std = float(np.std(ious, ddof=1)) if len(ious) > 1 else float("nan")
                cells.append(f"{_fmt(float(np.mean(ious)))} ± {_fmt(std)}")
                series.setdefault(f"{mode} · {size} images", {})[lr] = (
                    float(np.mean(ious)),
                    0.0 if np.isnan(std) else std,
                )
            chosen = [select_on_validation([r for r in runs if r["seed"] == k]) for k in context["seeds"]]
            ious = [r["test"]["iou"] for r in chosen]
            std = float(np.std(ious, ddof=1)) if len(ious) > 1 else float("nan")
            cells.append(f"{_fmt(float(np.mean(ious)))} ± {_fmt(std)}")
            cells.append(", ".join(number_name(r["optimiser"]["lr"]) for r in chosen))
            selected[f"{mode} · {size} images: {SELECTED}"] = float(np.mean(ious))
            lines.append(f"| {size} | " + " | ".join(cells) + " |")
    plot_iou_against_lr(series, out / "lr_grid.png", "test IoU against the learning rate", selected)
    lines += ["", "![test IoU against the learning rate](lr_grid.png)"]
    return lines


def write_report(results: list[dict], context: dict, out: Path, case_data: dict) -> Path:
    """``OUT/report.md`` with its PNGs and ``results.csv``; returns the report's path.

    With a learning-rate grid (``context["grid_modes"]``), the tables and figures compare the modes at
    ``context["lr"]`` and `lr_grid_section` adds the grid."""
    grid_modes = context.get("grid_modes") or []
    write_runs_csv(results, out / "results.csv", optimiser=bool(grid_modes))
    grid_lines = lr_grid_section(results, context, out) if grid_modes else []
    # The store served every C run, the grid's too: its extraction time is shared among them all.
    n_c = sum(1 for r in results if r["mode"] == "C")
    results = [r for r in results if r["optimiser"]["lr"] == context["lr"]] if grid_modes else results
    groups = group_runs(results)
    modes = [m for m in context["modes"]]
    sizes = sorted(context["sizes"], reverse=True)
    plot_metrics_vs_size(groups, modes, sizes, out / "metrics_vs_size.png")
    plot_loss_curves(groups, modes, sizes, out / "loss_curves.png")
    plot_cases(case_data, modes, sizes, out / "cases.png")
    mean = {
        k: {
            "iou": float(np.mean([r["test"]["iou"] for r in v])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in v])),
        }
        for k, v in groups.items()
    }
    std_iou = {
        k: float(np.std([r["test"]["iou"] for r in v], ddof=1)) if len(v) > 1 else float("nan")
        for k, v in groups.items()
    }
    extraction = context.get("extraction_seconds")
    share = extraction / n_c if extraction and n_c else None

    lines = [
        "# featcache compare-e2e report",
        "",
        f"Store `{context['store']}`: {context['n_test']} test images at {context['image_size']} px, "
        f"encoder {context['encoder']['arch']} ({context['encoder']['source'].get('kind')}), "
        + (
            f"features of block{'s' if len(context['layers']) > 1 else ''} {', '.join(map(str, context['layers']))} "
            f"of {context['depth']}, "
            if context.get("layers")
            else ""
        )
        + f"runs on {context['device']}. "
        f"Sizes {', '.join(map(str, sizes))}; seeds {', '.join(map(str, context['seeds']))}; "
        + (
            f"epochs shortened to {context['epochs']} for every size (the study's protocol uses 100–1200)."
            if context["epochs"]
            else "epochs and batch sizes from the study's protocol."
        )
        + (f" SGD learning rate {context['lr']} (the study's: 0.0002)." if context.get("lr", 2e-4) != 2e-4 else ""),
        "",
        f"Data: `{context['dataset_root']}` ({context['dataset']['layout']} layout, "
        + ", ".join(f"{k} {v}" for k, v in context["dataset"]["counts"].items())
        + "). "
        + (context["dataset"].get("split_note") or "Official splits."),
        "",
        "Modes, all on the same seeded subsets, flips and protocol:",
        "",
        *[f"- **{m}**: {MODES[m].description}" for m in modes],
        "",
        "Every number below is the mean over seeds; ± is the standard deviation over seeds. "
        "Columns marked *study* are the published figures (theirs, ISIC 2017 test set, RTX 4070 Ti Super), "
        "shown for orientation only: they are not from this run.",
        "",
        "## Test IoU",
        "",
        "| size | " + " | ".join(modes) + " | study E | study F |",
        "|---|" + "---|" * (len(modes) + 2),
    ]
    for s in sizes:
        cells = [f"{_fmt(mean[(m, s)]['iou'])} ± {_fmt(std_iou[(m, s)])}" for m in modes]
        lines.append(
            f"| {s} | " + " | ".join(cells) + f" | {_fmt(STUDY_IOU['E'].get(s))} | {_fmt(STUDY_IOU['F'].get(s))} |"
        )
    lines += [
        "",
        "![IoU, Dice and sensitivity against training-set size](metrics_vs_size.png)",
        "",
        "## Training time (the study's Table 3, extended)",
        "",
        "Seconds of training steps per run (device synchronised; validation, checkpoints and extraction excluded), "
        "% saved and speed-up against E.",
    ]
    if any("group" in r for r in results):
        lines.append(
            "C runs of one size trained their seeds together as one grouped network; each run's time is the "
            "group's divided by the number of seeds."
        )
    if share is not None:
        lines.append(
            f"The store's extraction took {extraction:.1f} s ({context.get('extraction_device')}); spread over the "
            f"{n_c} C runs that used it, that is {share:.2f} s per run, shown as *C+extract*."
        )
    header = ["size", *modes] + (["C+extract"] if share is not None and "C" in modes else [])
    if "E" in modes:
        header += [f"{m} saved vs E" for m in modes if m != "E"] + [f"{m} speed-up" for m in modes if m != "E"]
    header += ["study E", "study F"]
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for s in sizes:
        t = {m: mean[(m, s)]["train_seconds"] for m in modes}
        row = [str(s), *(f"{t[m]:.2f}" for m in modes)]
        if share is not None and "C" in modes:
            row.append(f"{t['C'] + share:.2f}")
        if "E" in modes:
            row += [f"{100 * (1 - t[m] / t['E']):.1f} %" for m in modes if m != "E"]
            row += [f"{t['E'] / t[m]:.1f}x" for m in modes if m != "E"]
        row += [_fmt(STUDY_SECONDS["E"].get(s), 1), _fmt(STUDY_SECONDS["F"].get(s), 1)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
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
                    [r["test"]["iou"] for r in groups[(a, s)]], [r["test"]["iou"] for r in groups[(b, s)]]
                )
                lines.append(f"| {s} | {a} − {b} | {d:+.3f} | [{_fmt(lo)}, {_fmt(hi)}] |")
    lines += [
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
        f"{len(case_data['ids'])} test images, first seed: truth outlined red, prediction green.",
        "",
        "![case figures](cases.png)",
        "",
        "## Files",
        "",
        "- `results.csv`: one row per run; `runs/MODE/size-N/seed-K/results.json` (a grid mode's: "
        "`runs/MODE/size-N/lr-X/seed-K/`): each run in full, with its loss curve.",
        "",
    ]
    report = out / "report.md"
    with atomic_path(report) as tmp:
        tmp.write_text("\n".join(lines))
    return report
