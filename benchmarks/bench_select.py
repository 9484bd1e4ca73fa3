"""Seconds to choose the images to label: each selection strategy over features already in memory.

Features: synthetic, 2,000 x 768 float32 (ViT-B's width) standard normal rows scaled to unit norm, seeded (no
clusters for k-means to find). With ``--store PATH``, also the features of a featcache store's training split
(identity view, every stored layer), pooled per image by `featcache.selection.training_candidates` (as `featcache
select` reads them); opening the store, and reading and pooling its features, are timed apart, not in the
selection's seconds.

Each cell: wall seconds and, in brackets, the process's CPU seconds (all its threads; other processes on a shared
CPU do not lengthen them), each the median of ``--repeats`` calls of `featcache.selection.select` (seed 0),
device synchronised on CUDA; "-" for a budget larger than the input. The first call of each strategy is an
untimed warm-up (imports, thread pools). The load average is printed before and after.

    python benchmarks/bench_select.py
    python benchmarks/bench_select.py --store runs/real.zarr --budgets 10,20,40 --device cpu --json select.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from featcache.cli.parsing import parse_list
from featcache.core.runtime import resolve_device
from featcache.selection import STRATEGIES, select, training_candidates


def synthetic(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """``[n, dim]`` float32 unit-norm Gaussian rows (seed 0)."""
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.normalize(x, dim=1).to(device)


def from_store(path: Path, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """The store's training features pooled ``[n_train, L*C]`` (`training_candidates`, as `featcache select`
    reads them), the seconds to read and pool them, and the seconds to open the store and list its splits."""
    from featcache.store import FeatureStore

    start = time.perf_counter()
    with FeatureStore.open(path) as store:
        store.indices("train")
        opened = time.perf_counter() - start
        candidates = training_candidates(store, device)
    return candidates.x, candidates.seconds, opened


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(x: torch.Tensor, *, strategy: str, budget: int, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of ``repeats`` selections of ``budget`` rows of ``x``."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        select(x, budget=budget, strategy=strategy, seed=0)
        sync(x.device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def timing_table(x: torch.Tensor, title: str, budgets: tuple[int, ...], repeats: int) -> tuple[Table, dict]:
    """A table (strategies x budgets) of median wall (CPU) seconds, and the same figures as a dict."""
    table = Table(title=title)
    table.add_column("strategy")
    for budget in budgets:
        table.add_column(f"budget {budget}", justify="right")
    figures: dict[str, dict[int, dict[str, float]]] = {}
    fit = [b for b in budgets if b <= len(x)]
    for strategy in STRATEGIES:
        select(x, budget=min(budgets), strategy=strategy, seed=0)  # warm-up
        figures[strategy] = {b: seconds(x, strategy=strategy, budget=b, repeats=repeats) for b in fit}
        cells = (figures[strategy].get(b) for b in budgets)
        table.add_row(strategy, *(f"{c['wall']:.3f} ({c['cpu']:.3f})" if c else "-" for c in cells))
    return table, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="also time the training features of this featcache store")
    parser.add_argument("--budgets", default="10,20,40")
    parser.add_argument("--n", type=int, default=2000, help="synthetic rows")
    parser.add_argument("--dim", type=int, default=768, help="synthetic width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    budgets = parse_list(args.budgets, "--budgets")
    device = resolve_device(args.device)
    console = Console()
    console.print(
        f"bench_select: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    inputs = {f"synthetic {args.n} x {args.dim}": synthetic(args.n, args.dim, device)}
    read_seconds = open_seconds = None
    if args.store:
        x, read_seconds, open_seconds = from_store(args.store, device)
        inputs[f"{args.store.name}: train {x.shape[0]} x {x.shape[1]}"] = x
        console.print(
            f"open the store {open_seconds:.3f} s; read and pool its training features {read_seconds:.3f} s "
            "(neither in the table)"
        )
    results = {}
    for name, x in inputs.items():
        title = f"{name}: wall (CPU) seconds, median of {args.repeats}"
        table, results[name] = timing_table(x, title, budgets, args.repeats)
        console.print(table)
    console.print(f"load average after: {os.getloadavg()[0]:.1f}")
    if args.json:
        figures = {"device": str(device), "threads": torch.get_num_threads(), "read_seconds": read_seconds}
        figures |= {"open_seconds": open_seconds, "load": [os.getloadavg()[0], os.cpu_count()]}
        args.json.write_text(json.dumps({**figures, "seconds": results}, indent=2))


if __name__ == "__main__":
    main()
