"""The study's protocol x seeds in C mode from a store, grouped against sequential seeds, and F/C.

Runs `featcache.experiment.train_decoder` (C mode, every size of the protocol that the store's
training split allows, each over ``--seeds``), once with the seeds trained together as one grouped
network and once one by one, and reports wall seconds per size and in total, beside the study's
F-series times (an RTX 4070 Ti Super: another GPU, shown for orientation).
Then it times F mode (the frozen encoder recomputed every step) and C mode for the same few
epochs of one size and seed, so the F/C ratio is measured here, not taken from the study.

    python benchmarks/bench_sweep.py STORE.zarr --seeds 0-4                       # full protocol
    python benchmarks/bench_sweep.py STORE.zarr --sizes 20,10 --epochs 5 --seeds 0,1 --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from featcache.experiment import parse_list, parse_seeds, run_mode, train_decoder
from featcache.models import encoder_from_provenance
from featcache.protocol import STUDY_SIZES
from featcache.report import STUDY_SECONDS
from featcache.runtime import resolve_device
from featcache.store import FeatureStore
from featcache.train import TrainConfig


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--sizes", default=",".join(map(str, STUDY_SIZES)))
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs (quick runs)")
    parser.add_argument("--ratio-size", type=int, default=20, help="size of the F vs C comparison")
    parser.add_argument("--ratio-epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-sequential", action="store_true", help="skip the one-seed-at-a-time sweep")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    seeds = parse_seeds(args.seeds)
    console = Console()
    with FeatureStore.open(args.store) as store:
        n_train = len(store.indices("train"))
        encoder_prov = store.meta["encoder"]
    sizes = [s for s in parse_list(args.sizes, "--sizes") if s <= n_train]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console.print(f"bench_sweep: {name}; store {args.store} ({encoder_prov['arch']}); seeds {seeds}; "
                  f"epochs {'protocol' if args.epochs is None else args.epochs}")

    ways = ("grouped",) if args.no_sequential else ("grouped", "sequential")
    table = Table(title="C mode sweep (train-decoder): wall seconds")
    for col in ("size", "runs", *ways, *(("sequential/grouped",) if len(ways) == 2 else ()),
                "study F s, one seed (RTX 4070 Ti S, theirs)"):
        table.add_column(col, justify="right")
    rows, totals = [], dict.fromkeys(ways, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            walls = {}
            for way in ways:
                sync(device)
                started = time.perf_counter()
                train_decoder(args.store, TrainConfig(size=size, epochs=args.epochs), seeds, Path(tmp) / f"{way}-n{size}",
                              str(device), progress=False, grouped=way == "grouped")
                sync(device)
                walls[way] = time.perf_counter() - started
                totals[way] += walls[way]
            rows.append({"size": size, "runs": len(seeds), **{f"{w}_seconds": walls[w] for w in ways}})
            ratio = (f"{walls['sequential'] / walls['grouped']:.1f}x",) if len(ways) == 2 else ()
            table.add_row(str(size), str(len(seeds)), *(f"{walls[w]:.1f}" for w in ways), *ratio,
                          str(STUDY_SECONDS["F"].get(size, "–")))
    ratio = (f"{totals['sequential'] / totals['grouped']:.1f}x",) if len(ways) == 2 else ()
    table.add_row("all", str(len(seeds) * len(sizes)), *(f"{totals[w]:.1f}" for w in ways), *ratio,
                  f"{sum(STUDY_SECONDS['F'][s] for s in sizes if s in STUDY_SECONDS['F']):.1f}")
    console.print(table)

    encoder = encoder_from_provenance(encoder_prov["arch"], encoder_prov["source"], encoder_prov["weights_sha256"])
    cfg = TrainConfig(size=min(args.ratio_size, n_train), epochs=args.ratio_epochs, seed=seeds[0])
    timings = {}
    with FeatureStore.open(args.store) as store:
        for mode in ("F", "C"):
            result, _ = run_mode(store, mode, dataclasses.replace(cfg), {"ss": encoder, "init": encoder}, device)
            timings[mode] = result["train_seconds"]
    ratio = Table(title=f"F vs C, size {cfg.size}, {cfg.epochs} epochs, seed {cfg.seed} (measured here)")
    for col in ("F train s", "C train s", "F/C"):
        ratio.add_column(col, justify="right")
    ratio.add_row(f"{timings['F']:.2f}", f"{timings['C']:.2f}", f"{timings['F'] / timings['C']:.1f}x")
    console.print(ratio)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "sweep": rows, "totals": totals, "ratio": timings}, indent=2))


if __name__ == "__main__":
    main()
