"""Sweeps of training runs over seeds (and sizes and modes), their outputs and aggregation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from featcache.errors import FeatcacheError
from featcache.io import torch_save, write_json
from featcache.report import aggregate, plot_loss_curve, seeds_table, write_runs_csv
from featcache.runtime import err_console, out_console, resolve_device
from featcache.store import FeatureStore
from featcache.train import TrainConfig, train_from_store


@dataclass
class SeedSweep:
    """What `train_decoder` returns: every run's results and their aggregate."""

    out: Path
    results: list[dict]
    summary: dict


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` -> a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise FeatcacheError(f"--seeds {text!r} is not a list like 0,1,2 or a range like 0-4") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FeatcacheError(f"--seeds {text!r} must name distinct non-negative seeds, e.g. 0,1,2")
    return seeds


def _epoch_progress(bar: Progress, task) -> callable:
    def update(epoch: int, epochs: int, train_loss: float, val_loss: float) -> None:
        bar.update(task, completed=epoch, total=epochs, description=f"{bar.tasks[task].fields['label']} val {val_loss:.4f}")

    return update


def run_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def train_decoder(store_path: str, cfg: TrainConfig, seeds: list[int], out: Path, device: str = "auto",
                  progress: bool = True) -> SeedSweep:
    """Train the C-mode decoder of ``cfg`` once per seed from the store; write every run's outputs.

    Per seed: ``OUT/seed-K/results.json``, ``decoder.pt`` (best epoch, with the store's
    provenance) and ``loss_curve.png``; over seeds: ``OUT/summary.json`` and ``OUT/summary.csv``.
    """
    dev = resolve_device(device)
    results = []
    with FeatureStore.open(store_path) as store:
        cfg.resolved()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("epochs"), TimeElapsedColumn())
        with Progress(*columns, console=err_console, disable=not progress) as bar:
            for seed in seeds:
                run_cfg = dataclasses.replace(cfg, seed=seed)
                label = f"C size {cfg.size} seed {seed}"
                task = bar.add_task(label, total=run_cfg.resolved()[0], label=label)
                result, checkpoint = train_from_store(store, run_cfg, dev, _epoch_progress(bar, task))
                write_run(run_dir(out, seed), result, checkpoint)
                results.append(result)
    summary = {"mode": "C", "size": cfg.size, "augment": cfg.augment, "decoder": cfg.decoder,
               "store": str(store_path), **aggregate(results)}
    write_json(out / "summary.json", summary)
    write_runs_csv(results, out / "summary.csv")
    out_console.print(seeds_table(results, summary, f"C mode, {cfg.size} training images, {len(seeds)} seeds ({cfg.augment} flips)"))
    return SeedSweep(out, results, summary)


def write_run(directory: Path, result: dict, checkpoint: dict | None) -> None:
    """results.json, the checkpoint (if any) and the loss curve of one run, each written atomically."""
    write_json(directory / "results.json", result)
    if checkpoint is not None:
        torch_save(checkpoint, directory / "decoder.pt")
    plot_loss_curve(result["history"], result["best_epoch"], directory / "loss_curve.png",
                    f"{result['mode']} · {result['size']} images · seed {result['seed']}")
