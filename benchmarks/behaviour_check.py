"""Behaviour unchanged, shown: the same commands before and after a change give the same outputs.

    python benchmarks/behaviour_check.py run BEFORE --src /path/to/old/checkout   # outputs of the old code
    python benchmarks/behaviour_check.py run AFTER                                # outputs of this checkout
    python benchmarks/behaviour_check.py compare BEFORE AFTER [--allow-new-keys]

``run`` executes a fixed list of commands (`COMMANDS`: synth, extract, pretrain, train-decoder in its
sequential, grouped, linear, grid and feature-flip forms, compare-e2e over every mode, predict, evaluate,
info and the demo) with ``python -m featcache`` from ``--src`` (default: this checkout) on the CPU, and
records every command's ``--help`` options. ``compare`` checks that every JSON file (results.json,
summary.json, history, info) is equal apart from timings, machine-dependent entries and the output
folder's own path, that every CSV and predicted mask is equal byte for byte (CSV timing columns aside),
and that every command lists the same options. It prints what differs and exits 1 if anything does.
``--allow-new-keys``: keys that only the second run has are listed but do not fail the check (a change
that adds to the schema).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Keys whose values are timings, dates or the machine's: never compared.
UNCOMPARED = {
    "train_seconds",
    "total_seconds",
    "seconds",
    "measured_seconds",
    "images_per_second",
    "epoch_train_seconds",
    "created",
    "bytes_on_disk",
    "library_version",
}
CSV_TIMINGS = {"train_seconds", "total_seconds", "train_seconds_mean", "train_seconds_std"}
HELP_COMMANDS = ("synth", "pretrain", "extract", "info", "verify", "train-decoder", "compare-e2e", "predict")
HELP_COMMANDS += ("evaluate", "demo")

MICRO = "--encoder random --arch vit_micro --image-size 32 --views flips --workers 0 --shard-size 8"
TRAIN = "--size 8 --seeds 0,1 --epochs 3 --batch-size 4 --val-size 4"
#: (name, arguments); ``{out}`` is the run's output folder.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("synth", "synth {out}/data --n-train 24 --n-val 8 --n-test 8 --image-size 48x64 --seed 3"),
    ("extract", f"extract {{out}}/data --out {{out}}/store.zarr {MICRO} --dtype float32"),
    ("extract-h5", f"extract {{out}}/data --out {{out}}/store.h5 {MICRO} --views identity"),
    ("info", "info {out}/store.zarr --json"),
    (
        "pretrain",
        "pretrain {out}/data --out {out}/enc.pt --arch vit_micro --init random --epochs 2 --batch-size 4 "
        "--image-size 32 --lr 1e-3",
    ),
    ("td-sequential", f"train-decoder {{out}}/store.zarr {TRAIN} --sequential --out {{out}}/td-sequential"),
    ("td-grouped", f"train-decoder {{out}}/store.zarr {TRAIN} --grouped --out {{out}}/td-grouped"),
    ("td-linear", f"train-decoder {{out}}/store.zarr {TRAIN} --decoder linear --out {{out}}/td-linear"),
    (
        "td-grid",
        f"train-decoder {{out}}/store.zarr {TRAIN} --lr 1e-3,5e-3 --weight-decay 1e-4,1e-3 --out {{out}}/td-grid",
    ),
    (
        "td-feature-flip",
        f"train-decoder {{out}}/store.zarr {TRAIN} --augment feature-flip --eval-size original "
        "--out {out}/td-feature-flip",
    ),
    (
        "td-h5",
        "train-decoder {out}/store.h5 --size 6 --seeds 0 --epochs 2 --batch-size 3 --val-size 3 "
        "--augment none --out {out}/td-h5",
    ),
    (
        "compare",
        "compare-e2e {out}/store.zarr --sizes 8,4 --seeds 0,1 --modes E,Es,F,FI,C --epochs 2 --batch-size 4 "
        "--val-size 3 --lr 1e-2 --out {out}/compare",
    ),
    (
        "compare-grid",
        "compare-e2e {out}/store.zarr --sizes 8 --seeds 0,1 --modes F,C --epochs 2 --batch-size 4 "
        "--val-size 3 --lr 1e-2,5e-3 --out {out}/compare-grid",
    ),
    ("predict", "predict {out}/td-sequential {out}/data/ISIC-2017_Test_v2_Data --out {out}/predict --overlays none"),
    ("evaluate", "evaluate {out}/predict {out}/data/ISIC-2017_Test_v2_Part1_GroundTruth --json {out}/evaluate.json"),
    ("demo", "demo --out {out}/demo"),
)


def run(out: Path, src: Path) -> None:
    """Run every command of `COMMANDS` with the featcache of ``src`` into ``out``; record each --help's options."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src.resolve()), "COLUMNS": "200", "OMP_NUM_THREADS": "2"}
    log = {}
    for name, args in COMMANDS:
        started = time.perf_counter()
        argv = [sys.executable, "-m", "featcache", "--device", "cpu", *args.format(out=out).split()]
        done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=src, check=False)
        log[name] = {"code": done.returncode, "seconds": round(time.perf_counter() - started, 1)}
        if name == "info":
            (out / "info.json").write_text(done.stdout)
        print(f"{name}: exit {done.returncode} in {log[name]['seconds']} s", flush=True)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
    options = {}
    for command in HELP_COMMANDS:
        text = subprocess.run(
            [sys.executable, "-m", "featcache", command, "--help"], capture_output=True, text=True, env=env, cwd=src
        ).stdout
        options[command] = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)))
    (out / "behaviour.json").write_text(json.dumps({"commands": log, "options": options}, indent=1))


def _json_differences(a, b, where: str, root_a: str, root_b: str, new_ok: bool, added: list[str]) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key in UNCOMPARED:
                continue
            if key not in b:
                out.append(f"{where}.{key}: only before")
            elif key not in a:
                (added if new_ok else out).append(f"{where}.{key}: only after")
            else:
                out += _json_differences(a[key], b[key], f"{where}.{key}", root_a, root_b, new_ok, added)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items before, {len(b)} after"]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _json_differences(x, y, f"{where}[{i}]", root_a, root_b, new_ok, added)
        return out
    if isinstance(a, str) and isinstance(b, str):
        a, b = a.replace(root_a, "<OUT>"), b.replace(root_b, "<OUT>")
    return [] if a == b else [f"{where}: {str(a)[:80]!r} -> {str(b)[:80]!r}"]


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in CSV_TIMINGS} for row in csv.DictReader(f)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(before: Path, after: Path, new_ok: bool) -> int:
    """Print every difference between two `run` outputs; 0 when there is none (beyond allowed new keys)."""
    before, after = before.resolve(), after.resolve()
    problems: list[str] = []
    added: list[str] = []
    files_a = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    files_b = {p.relative_to(after) for p in after.rglob("*") if p.is_file()}
    checked = 0
    for rel in sorted(files_a | files_b):
        if rel.suffix not in (".json", ".csv") and not rel.name.endswith("_segmentation.png"):
            continue
        if rel.name == "behaviour.json":
            continue
        if rel not in files_b or rel not in files_a:
            problems.append(f"{rel}: only {'before' if rel in files_a else 'after'}")
            continue
        checked += 1
        a, b = before / rel, after / rel
        if rel.suffix == ".json":
            problems += _json_differences(
                json.loads(a.read_text()), json.loads(b.read_text()), str(rel), str(before), str(after), new_ok, added
            )
        elif rel.suffix == ".csv":
            rows_a, rows_b = _csv_rows(a), _csv_rows(b)
            if rows_a != rows_b:
                problems.append(f"{rel}: rows differ")
        elif _digest(a) != _digest(b):
            problems.append(f"{rel}: bytes differ")
    log_a = json.loads((before / "behaviour.json").read_text())
    log_b = json.loads((after / "behaviour.json").read_text())
    for name, entry in log_a["commands"].items():
        if entry["code"] != log_b["commands"].get(name, {}).get("code"):
            problems.append(f"command {name}: exit {entry['code']} before, {log_b['commands'].get(name)} after")
    for command, options in log_a["options"].items():
        now = log_b["options"].get(command, [])
        if options != now:
            problems.append(
                f"{command} --help: lost {sorted(set(options) - set(now))}, gained {sorted(set(now) - set(options))}"
            )
    print(f"{checked} files compared, {len(log_a['options'])} commands' options compared")
    for line in added:
        print(f"new key (allowed): {line}")
    for line in problems:
        print(f"DIFFERS: {line}")
    print("same behaviour" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("out", type=Path)
    run_parser.add_argument("--src", type=Path, default=ROOT)
    compare_parser = sub.add_parser("compare")
    compare_parser.add_argument("before", type=Path)
    compare_parser.add_argument("after", type=Path)
    compare_parser.add_argument("--allow-new-keys", action="store_true")
    args = parser.parse_args()
    if args.action == "run":
        run(args.out, args.src)
    else:
        sys.exit(compare(args.before, args.after, args.allow_new_keys))


if __name__ == "__main__":
    main()
