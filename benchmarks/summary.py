"""Every figure of one `benchmarks/gpu.sh` run as one table, beside the targets of issue 13 where it sets one.

Reads the JSON files gpu.sh writes into its output folder (data.json, store_info.json,
bench_extract.json, bench_step.json, bench_step_tail.json, bench_profile.json, bench_sweep.json,
store_info_timm.json); a file that is
missing, empty or cut short gives "–" for its figures. The table is in Markdown, to paste as it is.

    python benchmarks/summary.py gpu-out
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from featcache.store.schema import VIEWS

DASH = "–"
# Issue 13's targets, for one run on one H100/H200 (the E/C one is for the CPU).
TARGET_WHOLE_OVER_ENCODER = 0.8
TARGET_ENCODER_VIEWS_PER_SECOND = 10_000
TARGET_PROTOCOL_SECONDS = 60
TARGET_CPU_E_OVER_C = 10
# Issue 22's, for the CPU at ViT-B/16, batch 10.
TARGET_CPU_E_OVER_T1, TARGET_CPU_P2_OVER_T2, TARGET_T2_OVER_E_MEMORY = 6, 2, 0.35

Row = tuple[str, str, str, str]  # what, value, unit, target


def load(out: Path, name: str) -> dict | None:
    """The JSON object in ``out/name``, or None when it is missing, empty or not (yet) whole."""
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


def number(value: float | None, digits: int = 1) -> str:
    """``value`` with thousands separators and ``digits`` decimals; "–" for None."""
    return DASH if value is None else f"{value:,.{digits}f}"


def data_rows(data: dict | None) -> list[Row]:
    """What the run trained and extracted on: real or synthetic, images per split."""
    if data is None:
        return [("data", DASH, "train/val/test images", "")]
    counts = "/".join(str(data["counts"][s]) for s in ("train", "val", "test"))
    return [(f"data: {data['kind']}", counts, "train/val/test images", "")]


def extract_rows(info: dict | None, what: str) -> list[Row]:
    """The images/s `featcache extract` recorded in a store."""
    if info is None:
        return [(what, DASH, "images/s", "")]
    rate = info["extraction"]["images_per_second"]
    arch = info["encoder"]["arch"]
    views = len(info["views"])
    return [(f"{what}, {arch}, {views} views, {info['dtype']}, {info['n']} images", number(rate), "images/s", "")]


def bench_extract_rows(bench: dict | None) -> list[Row]:
    """Each bench_extract stage (images/s; MB/s for the writer alone), encoder views/s, the whole/encoder ratios."""
    if bench is None:
        return [("bench_extract", DASH, "", "")]
    views = len(VIEWS[bench["options"]["views"]])
    rows: list[Row] = []
    for stage in bench["stages"]:
        what = f"bench_extract {stage['stage']}"
        if "skipped" in stage:
            rows.append((what, f"skipped: {stage['skipped']}", "", ""))
        elif stage.get("mb_per_second") is not None:
            rows.append((what, number(stage["mb_per_second"]), "MB/s", ""))
        else:
            rows.append((what, number(stage["images_per_second"]), "images/s", ""))
        if stage["stage"].startswith("2 encoder alone"):
            target = f"≥ {TARGET_ENCODER_VIEWS_PER_SECOND:,} (H200)"
            rows.append(
                ("bench_extract encoder alone, views/s", number(stage["images_per_second"] * views), "views/s", target)
            )
    target = f"≥ {TARGET_WHOLE_OVER_ENCODER}"
    for key, what in (("ratio_whole_over_encoder", "loop"), ("ratio_whole_wall_over_encoder", "wall")):
        rows.append((f"extraction whole ({what}) / encoder alone", number(bench.get(key), 2), "ratio", target))
    return rows


def step_rows(step: dict | None, what: str = "bench_step") -> list[Row]:
    """Per (arch, batch): seconds per sample of E, F, C and the ratios E/C, F/C; of the Tk and Pk (issue 22) with
    E/T1, P2/T2 and T2's peak training memory against E's, where the rows have them."""
    if step is None:
        return [(f"{what} E / F / C", DASH, "s per sample", "")]
    rows: list[Row] = []
    for r in step["rows"]:
        label = f"{what} {r['arch']}, batch {r['batch_size']}"
        if all(m in r for m in ("E", "F", "C")):
            rows.append((f"{label}: E / F / C", " / ".join(f"{r[m]:.4f}" for m in ("E", "F", "C")), "s per sample", ""))
            target = f"≥ {TARGET_CPU_E_OVER_C}x (CPU)" if r["arch"] == "vit_b_16" else ""
            rows.append((f"{label}: E/C, F/C", f"{r['E/C']:.1f}x, {r['F/C']:.1f}x", "ratio", target))
        if "C eager/C" in r:
            rows.append((f"{label}: C without / with CUDA graphs", f"{r['C eager/C']:.1f}x", "ratio", ""))
        rows += tail_rows(r, label)
    return rows


def tail_rows(r: dict, label: str) -> list[Row]:
    """A bench_step row's Tk and Pk figures: seconds per sample, E/T1 and P2/T2, T2's memory against E's."""
    modes = [m for m in ("E", "C", "T1", "T2", "P2") if m in r]
    if not any(m in r for m in ("T1", "T2", "P2")):
        return []
    rows: list[Row] = [(f"{label}: {' / '.join(modes)}", " / ".join(f"{r[m]:.4f}" for m in modes), "s per sample", "")]
    for ratio, goal in (("E/T1", TARGET_CPU_E_OVER_T1), ("P2/T2", TARGET_CPU_P2_OVER_T2)):
        if ratio in r:
            rows.append((f"{label}: {ratio}", f"{r[ratio]:.1f}x", "ratio", f"≥ {goal}x (CPU, issue 22)"))
    peaks = r.get("peak_mib", {})
    if "T2" in peaks and "E" in peaks:
        share = f"≤ {TARGET_T2_OVER_E_MEMORY:.0%} (issue 22)"
        rows.append((f"{label}: T2 / E peak training memory", f"{peaks['T2'] / peaks['E']:.0%}", "ratio", share))
    return rows


def profile_rows(profile: dict | None) -> list[Row]:
    """The profiled grouped step at size 2000's batch: ms per step, achieved TFLOP/s, the top three operators."""
    if profile is None:
        return [("bench_profile, grouped step", DASH, "ms", "")]
    what = f"bench_profile, {profile['runs']} runs grouped, batch {profile['batch_size']}: step (decoder TFLOP/s)"
    top = ", ".join(f"{e['name']} {e['self_us'] / 1e3:.0f} ms" for e in profile["top"][:3])
    return [
        (what, f"{profile['ms_per_step']:.2f} ({profile['tflops']:.1f})", "ms", ""),
        ("  top operators, one epoch", top, "", ""),
    ]


def sweep_rows(sweep: dict | None) -> list[Row]:
    """The protocol x seeds as one call (wall, training per size), the size-by-size grouped sweep, F/C, sequential."""
    target = f"< {TARGET_PROTOCOL_SECONDS} s (H100/H200, 5 seeds)"
    if sweep is None or not sweep.get("protocol"):
        return [("protocol x seeds, one call (C), wall", DASH, "s", target)]
    protocol, n_seeds = sweep["protocol"], len(sweep["seeds"])
    wall = protocol["wall_seconds"]
    value = number(wall) if wall is not None else f"stopped after {number(protocol['stopped_after_seconds'])}"
    rows: list[Row] = [(f"protocol x {n_seeds} seeds, one call (C), wall", value, "s", target)]
    for size, row in protocol["sizes"].items():
        what = f"  size {size}: training of {n_seeds} runs (finished after)"
        rows.append((what, f"{number(sum(row['train_seconds']))} ({number(row['finished_seconds'])})", "s", ""))
    grouped = sweep.get("grouped") or {}
    if grouped:
        wall = sum(r["wall_seconds"] for r in grouped.values())
        train = sum(r["train_seconds"] for r in grouped.values())
        what = f"size by size, grouped seeds ({len(grouped)} of {len(protocol['sizes'])} sizes): wall (training)"
        rows.append((what, f"{wall:,.1f} ({train:,.1f})", "s", ""))
    ratio = sweep.get("ratio")
    if ratio:
        what = f"F/C, size {ratio['size']}, {ratio['epochs']} epochs, training"
        rows.append((what, f"{ratio['F'] / ratio['C']:.1f}x", "ratio", ""))
    shared = [s for s in sweep.get("sequential") or {} if s in grouped]
    if shared:
        over = sum(sweep["sequential"][s]["train_seconds"] for s in shared) / sum(
            grouped[s]["train_seconds"] for s in shared
        )
        rows.append((f"sequential / grouped seeds, training (sizes {','.join(shared)})", f"{over:.1f}x", "ratio", ""))
    return rows


def summary_table(out: Path) -> Table:
    """One table of every figure in ``out``."""
    table = Table(title=f"gpu.sh summary: {out}", box=box.MARKDOWN)
    for col, justify in (("what", "left"), ("value", "right"), ("unit", "left"), ("target (issue 13)", "left")):
        table.add_column(col, justify=justify)
    rows = [
        *data_rows(load(out, "data.json")),
        *extract_rows(load(out, "store_info.json"), "extract"),
        *bench_extract_rows(load(out, "bench_extract.json")),
        *step_rows(load(out, "bench_step.json")),
        *step_rows(load(out, "bench_step_tail.json"), "bench_step Tk/Pk"),
        *profile_rows(load(out, "bench_profile.json")),
        *sweep_rows(load(out, "bench_sweep.json")),
        *extract_rows(load(out, "store_info_timm.json"), "extract"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="gpu.sh's output folder")
    Console().print(summary_table(parser.parse_args().out))


if __name__ == "__main__":
    main()
