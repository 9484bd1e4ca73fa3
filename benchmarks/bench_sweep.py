"""The study's protocol x seeds in C mode from a store: as one call, grouped against sequential seeds, and F/C.

Runs the C mode over every size of the protocol that the store's training split allows, each over
``--seeds``, in four parts, cheapest-to-lose last:

1. the protocol sweep as one call: `featcache.train.compare.compare_e2e` in C mode over every size
   and seed (what `compare-e2e --modes C` does; on CUDA it reads each split once and trains the
   sizes concurrently): its wall seconds (report included) and, per size, the runs' training
   seconds from the results and when the size finished. Stopped from outside (Ctrl-C, or the
   SIGTERM of gpu.sh's step limit), it keeps the sizes that finished and the script ends there;
2. F mode (the frozen encoder recomputed every step) against C mode for the same few epochs of
   one size and seed, so the F/C ratio is measured here, not taken from the study;
3. the whole sweep size by size with `featcache.train.sweep.train_decoder`, the seeds of each size
   trained together as one grouped network (what `train-decoder --seeds` does on CUDA): wall
   seconds and training seconds per size, beside the study's F-series times (an RTX 4070 Ti
   Super: another GPU, shown for orientation);
4. the sizes in ``--sequential-sizes`` again with the seeds one by one, for the grouped/sequential
   ratio on this machine.

Each part starts with an untimed one-epoch warm-up (on the smallest size). With ``--json`` the
figures are rewritten after every part and every size, so a run cut short keeps what it measured.

With ``--lr`` and/or ``--weight-decay`` lists (a hyperparameter grid), the bench measures the grid
instead: per size, every (lr, weight decay, seed) run as one grouped network, the combinations of
each seed grouped (one group per seed), and one by one; it checks that the three agree.

    python benchmarks/bench_sweep.py STORE.zarr --seeds 0-4                       # full protocol
    python benchmarks/bench_sweep.py STORE.zarr --sizes 20,10 --epochs 5 --seeds 0,1 --device cpu
    python benchmarks/bench_sweep.py STORE.zarr --sizes 20 --epochs 5 --seeds 0,1 --lr 1e-4,2e-4,5e-4,1e-3 \
        --weight-decay 1e-4,1e-3 --device cpu                                      # the grid
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from featcache.cli.parsing import parse_list, parse_numbers, parse_seeds
from featcache.core.context import Context
from featcache.core.runtime import synchronize
from featcache.models.spec import EncoderSpec
from featcache.results.records import RunResults
from featcache.results.study import STUDY_SECONDS
from featcache.store.feature_store import FeatureStore
from featcache.train.compare import compare_e2e
from featcache.train.config import CompareConfig, SweepConfig, TrainConfig
from featcache.train.protocol import STUDY_SIZES
from featcache.train.run import train_mode
from featcache.train.sweep import train_decoder


def protocol_config(store: str, sizes: list[int], seeds: list[int], *, epochs: int | None, out: Path) -> CompareConfig:
    """`compare-e2e --modes C` over ``sizes`` x ``seeds``."""
    return CompareConfig(store=store, out=out, modes=("C",), sizes=tuple(sizes), seeds=tuple(seeds), epochs=epochs)


def timed_protocol(
    store: str, sizes: list[int], seeds: list[int], *, epochs: int | None, out: Path, ctx: Context
) -> dict:
    """Wall seconds of one C-mode `compare_e2e` call over ``sizes`` x ``seeds``; per size its runs' training seconds
    and test IoU, in seed order, and when the size finished (seconds after the start: on CUDA the sizes train side
    by side). Stopped from outside (Ctrl-C, or SIGTERM: see `main`), it keeps the sizes that finished, with
    ``wall_seconds`` None and ``stopped_after_seconds``."""
    synchronize(ctx.device)
    started, started_at = time.perf_counter(), time.time()
    stopped = False
    try:
        compare_e2e(protocol_config(store, sizes, seeds, epochs=epochs, out=out), ctx=ctx)
    except KeyboardInterrupt:
        stopped = True
    synchronize(ctx.device)
    wall = time.perf_counter() - started
    figures: dict = {"wall_seconds": None if stopped else round(wall, 3), "sizes": {}}
    if stopped:
        figures["stopped_after_seconds"] = round(wall, 3)
    for size in sizes:
        paths = sorted((out / "runs" / "C" / f"size-{size}").glob("seed-*/results.json"))
        rows = sorted((RunResults.read(path) for path in paths), key=lambda r: r.seed)
        if len(rows) == len(seeds):
            figures["sizes"][size] = {
                "train_seconds": [round(r.train_seconds, 3) for r in rows],
                "test_iou": [round(r.test.iou, 4) for r in rows],
                "finished_seconds": round(max(path.stat().st_mtime for path in paths) - started_at, 1),
            }
    return figures


def protocol_table(protocol: dict, n_seeds: int) -> Table:
    """Per size the runs' training seconds (a grouped run reports its share of the group's) and when the size
    finished, then the call's wall."""
    title = f"protocol sweep, one call (compare-e2e, C mode, {n_seeds} seeds per size): seconds"
    table = Table(title=title, min_width=len(title))
    for col in ("size", "train, per run", "train, sum of runs", "finished after"):
        table.add_column(col, justify="right")
    for size, row in protocol["sizes"].items():
        table.add_row(
            str(size),
            " ".join(f"{t:.2f}" for t in row["train_seconds"]),
            f"{sum(row['train_seconds']):.1f}",
            f"{row['finished_seconds']:.1f}",
        )
    if protocol["wall_seconds"] is None:
        table.add_row("all, wall", "", "", f"stopped after {protocol['stopped_after_seconds']:.1f}")
    else:
        table.add_row("all, wall", "", "", f"{protocol['wall_seconds']:.1f}")
    return table


def timed_sweep(
    store: str, size: int, seeds: list[int], *, epochs: int | None, out: Path, ctx: Context, grouped: bool
) -> dict:
    """Wall seconds of one `train_decoder` call, and the training seconds its runs report (the whole group's once)."""
    synchronize(ctx.device)
    started = time.perf_counter()
    cfg = SweepConfig(store=store, out=out, size=size, seeds=tuple(seeds), epochs=epochs, grouped=grouped)
    sweep = train_decoder(cfg, ctx=ctx)
    synchronize(ctx.device)
    wall = time.perf_counter() - started
    if grouped and len(seeds) > 1:
        train = sweep.results[0].group.train_seconds
    else:
        train = sum(r.train_seconds for r in sweep.results)
    return {
        "wall_seconds": round(wall, 3),
        "train_seconds": round(train, 3),
        "test_iou": [round(r.test.iou, 4) for r in sweep.results],
    }


def stop_on_sigterm(signum: int, frame) -> None:
    """`timeout` (gpu.sh's step limit) sends SIGTERM: stop as Ctrl-C does, so the parts measured are kept."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--sizes", default=",".join(map(str, STUDY_SIZES)))
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--epochs", type=int, help="override the protocol's epochs (quick runs)")
    parser.add_argument("--sequential-sizes", help="sizes to rerun one seed at a time (default: all of --sizes)")
    parser.add_argument("--no-sequential", action="store_true", help="skip the one-seed-at-a-time part")
    parser.add_argument("--ratio-size", type=int, default=20, help="size of the F vs C comparison")
    parser.add_argument("--ratio-epochs", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lr", default="2e-4", help="SGD learning rates; several: bench the grid")
    parser.add_argument("--weight-decay", default="1e-4", help="SGD weight decays; several: bench the grid")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    ctx = Context.resolve(args.device, progress=False)
    device = ctx.device
    seeds = parse_seeds(args.seeds)
    console = Console(width=150)
    lrs, weight_decays = parse_numbers(args.lr, "--lr"), parse_numbers(args.weight_decay, "--weight-decay")
    if len(lrs) * len(weight_decays) > 1:
        bench_grid(args, seeds, grid=(lrs, weight_decays), ctx=ctx, console=console)
        return
    with FeatureStore.open(args.store) as store:
        n_train = len(store.indices("train"))
        encoder_record = store.record.encoder
    sizes = [s for s in parse_list(args.sizes, "--sizes") if s <= n_train]
    sequential = (
        []
        if args.no_sequential
        else [
            s
            for s in (parse_list(args.sequential_sizes, "--sequential-sizes") if args.sequential_sizes else sizes)
            if s in sizes
        ]
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    epochs = "protocol" if args.epochs is None else args.epochs
    console.print(f"bench_sweep: {name}; store {args.store} ({encoder_record.arch}); seeds {seeds}; epochs {epochs}")
    figures: dict = {
        "device": name,
        "store": args.store,
        "arch": encoder_record.arch,
        "seeds": seeds,
        "epochs": epochs,
        "protocol": None,
        "grouped": {},
        "sequential": {},
        "ratio": None,
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))

    with tempfile.TemporaryDirectory() as tmp:
        # Untimed: the process's one-time costs (CUDA context, kernel selection) would fall on the first size.
        warm_up = protocol_config(args.store, [min(sizes)], seeds, epochs=1, out=Path(tmp) / "warm-up-protocol")
        compare_e2e(warm_up, ctx=ctx)
        protocol_out = Path(tmp) / "protocol"
        figures["protocol"] = timed_protocol(args.store, sizes, seeds, epochs=args.epochs, out=protocol_out, ctx=ctx)
        console.print(protocol_table(figures["protocol"], len(seeds)))
        save()
        if figures["protocol"]["wall_seconds"] is None:
            return  # stopped from outside: what finished is saved
        figures["ratio"] = f_vs_c(
            args.store,
            encoder_record,
            cfg=TrainConfig(size=min(args.ratio_size, n_train), epochs=args.ratio_epochs, seed=seeds[0]),
            ctx=ctx,
            console=console,
        )
        save()
        try:
            for grouped in (True, False):
                warm_out = Path(tmp) / f"warm-up-{grouped}"
                timed_sweep(args.store, min(sizes), seeds, epochs=1, out=warm_out, ctx=ctx, grouped=grouped)
            for way, way_sizes in (("grouped", sizes), ("sequential", sequential)):
                for size in way_sizes:
                    run_way(figures, way, size, args=args, seeds=seeds, tmp=Path(tmp), ctx=ctx, console=console)
                    save()
        except KeyboardInterrupt:
            console.print("bench_sweep: stopped from outside; the sizes measured so far are saved")
            return
    console.print(sweep_table(figures, sizes, sequential))
    save()


GRID_WAYS = ("grouped", "per seed", "one by one")


def timed_grid(cfg: SweepConfig, *, way: str, ctx: Context) -> dict:
    """Wall and training seconds of the grid of ``cfg`` trained ``way`` (`GRID_WAYS`), and its runs' test IoU."""
    synchronize(ctx.device)
    started = time.perf_counter()
    calls = [cfg.seeds] if way != "per seed" else [(s,) for s in cfg.seeds]
    sweeps = [
        train_decoder(dataclasses.replace(cfg, seeds=group, grouped=way != "one by one"), ctx=ctx) for group in calls
    ]
    synchronize(ctx.device)
    wall = time.perf_counter() - started
    results = {(r.lr, r.weight_decay, r.seed): r for s in sweeps for r in s.results}
    if way == "one by one":
        train = sum(r.train_seconds for r in results.values())
    else:
        train = sum(s.results[0].group.train_seconds for s in sweeps)
    return {
        "wall_seconds": round(wall, 3),
        "train_seconds": round(train, 3),
        "test_iou": {f"{k[0]:g}/{k[1]:g}/{k[2]}": r.test.iou for k, r in sorted(results.items())},
    }


def bench_grid(
    args, seeds: list[int], *, grid: tuple[list[float], list[float]], ctx: Context, console: Console
) -> None:
    """Per size: the grid grouped, grouped per seed and one by one (each after an untimed one-epoch warm-up)."""
    with FeatureStore.open(args.store) as store:
        n_train = len(store.indices("train"))
    sizes = [s for s in parse_list(args.sizes, "--sizes") if s <= n_train]
    lrs, weight_decays = grid
    device = ctx.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    runs = len(lrs) * len(weight_decays) * len(seeds)
    epochs = "protocol" if args.epochs is None else args.epochs
    console.print(
        f"bench_sweep grid: {name}; store {args.store}; lr {lrs} x weight decay {weight_decays} x seeds {seeds} "
        f"= {runs} runs per size; epochs {epochs}; torch threads {torch.get_num_threads()}"
    )
    figures: dict = {
        "device": name,
        "store": args.store,
        "lrs": lrs,
        "weight_decays": weight_decays,
        "seeds": seeds,
        "epochs": epochs,
        "grid": {},
    }
    table = Table(title=f"C mode grid, {runs} runs per size: seconds (train-decoder --lr/--weight-decay)")
    for col in (
        "size",
        *(f"{w} {k}" for w in GRID_WAYS for k in ("wall", "train")),
        "one by one / grouped train",
        "one by one / per seed train",
        "max |Δ IoU|",
    ):
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        grid = dict(lrs=tuple(lrs), weight_decays=tuple(weight_decays))
        base = SweepConfig(store=args.store, out=Path(tmp), size=min(sizes), seeds=tuple(seeds), **grid)
        for way in GRID_WAYS:
            warm = dataclasses.replace(base, epochs=1, out=Path(tmp) / f"warm-{way}")
            timed_grid(warm, way=way, ctx=ctx)
        for size in sizes:
            row = {
                way: timed_grid(
                    dataclasses.replace(base, size=size, epochs=args.epochs, out=Path(tmp) / f"{way}-{size}"),
                    way=way,
                    ctx=ctx,
                )
                for way in GRID_WAYS
            }
            ious = np.array([list(row[w]["test_iou"].values()) for w in GRID_WAYS])
            row["max_iou_difference"] = float(np.abs(ious - ious[-1]).max())
            figures["grid"][size] = row
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2))
            g, p, o = (row[w]["train_seconds"] for w in GRID_WAYS)
            table.add_row(
                str(size),
                *(f"{row[w][k]:.1f}" for w in GRID_WAYS for k in ("wall_seconds", "train_seconds")),
                f"{o / g:.2f}x",
                f"{o / p:.2f}x",
                f"{row['max_iou_difference']:.1e}",
            )
    console.print(table)


def run_way(
    figures: dict, way: str, size: int, *, args, seeds: list[int], tmp: Path, ctx: Context, console: Console
) -> None:
    out = tmp / f"{way}-n{size}"
    row = timed_sweep(args.store, size, seeds, epochs=args.epochs, out=out, ctx=ctx, grouped=way == "grouped")
    figures[way][size] = row
    console.print(
        f"{way} size {size} x {len(seeds)} seeds: {row['wall_seconds']:.1f} s wall, {row['train_seconds']:.1f} "
        "s training"
    )


def f_vs_c(store_path: str, record, *, cfg: TrainConfig, ctx: Context, console: Console) -> dict:
    """Training seconds of F and C for the same run (each after an untimed one-epoch warm-up)."""
    encoder = EncoderSpec.recorded(record).build()
    timings = {}
    with FeatureStore.open(store_path) as store:
        encoders = {"ssl": encoder, "init": encoder}
        for mode in ("F", "C"):
            warm_up = dataclasses.replace(cfg, epochs=1)
            train_mode(store, mode, [warm_up], plan=warm_up.plan(store), encoders=encoders, ctx=ctx)
            runs = train_mode(store, mode, [cfg], plan=cfg.plan(store), encoders=encoders, ctx=ctx)
            timings[mode] = runs[0].results.train_seconds
    table = Table(title=f"F vs C, size {cfg.size}, {cfg.epochs} epochs, seed {cfg.seed} (measured here)")
    for col in ("F train s", "C train s", "F/C"):
        table.add_column(col, justify="right")
    table.add_row(f"{timings['F']:.2f}", f"{timings['C']:.2f}", f"{timings['F'] / timings['C']:.1f}x")
    console.print(table)
    return {"size": cfg.size, "epochs": cfg.epochs, **timings}


def sweep_table(figures: dict, sizes: list[int], sequential: list[int]) -> Table:
    """Per size: grouped (and sequential) wall and training seconds, beside the study's F times; totals last."""
    table = Table(title=f"C mode sweep (train-decoder), {len(figures['seeds'])} seeds per size: seconds")
    columns = ["size", "grouped wall", "grouped train"]
    if sequential:
        columns += ["sequential wall", "sequential train", "sequential/grouped train"]
    for col in (*columns, "study F s, one seed (RTX 4070 Ti S, theirs)"):
        table.add_column(col, justify="right")
    for size in sizes:
        g, s = figures["grouped"][size], figures["sequential"].get(size)
        cells = [str(size), f"{g['wall_seconds']:.1f}", f"{g['train_seconds']:.1f}"]
        if sequential:
            cells += (
                [
                    f"{s['wall_seconds']:.1f}",
                    f"{s['train_seconds']:.1f}",
                    f"{s['train_seconds'] / g['train_seconds']:.1f}x",
                ]
                if s
                else ["–"] * 3
            )
        table.add_row(*cells, str(STUDY_SECONDS["F"].get(size, "–")))
    total = {
        way: {k: sum(row[k] for row in figures[way].values()) for k in ("wall_seconds", "train_seconds")}
        for way in ("grouped", "sequential")
    }
    figures["grouped_total"] = total["grouped"]
    cells = ["all", f"{total['grouped']['wall_seconds']:.1f}", f"{total['grouped']['train_seconds']:.1f}"]
    if sequential:
        shared = {way: sum(figures[way][s]["train_seconds"] for s in sequential) for way in ("grouped", "sequential")}
        figures["sequential_over_grouped_train"] = round(shared["sequential"] / shared["grouped"], 3)
        cells += [
            f"{total['sequential']['wall_seconds']:.1f}",
            f"{total['sequential']['train_seconds']:.1f}",
            f"{figures['sequential_over_grouped_train']:.1f}x (sizes {','.join(map(str, sequential))})",
        ]
    table.add_row(*cells, f"{sum(STUDY_SECONDS['F'][s] for s in sizes if s in STUDY_SECONDS['F']):.1f}")
    return table


if __name__ == "__main__":
    main()
