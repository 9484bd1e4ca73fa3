"""Sweeps of training runs over seeds (and sizes and modes), their outputs and aggregation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from featcache.distributed import Distributed
from featcache.encoder_check import check_encoder_matches
from featcache.errors import FeatcacheError, OptionError
from featcache.io import ensure_writable_dir, torch_save, write_json
from featcache.models import AnyEncoder, encoder_like, encoder_provenance, rebuild_encoder
from featcache.modes import MODES
from featcache.progress import EpochCallback, epoch_row, progress_bar
from featcache.report import (
    aggregate,
    grid_summary,
    number_name,
    plot_grid,
    plot_loss_curve,
    write_grid_csv,
    write_runs_csv,
)
from featcache.resume import Checkpointer
from featcache.runtime import err_console
from featcache.sizes import SizeGroup, train_sizes_from_store
from featcache.store import FeatureStore
from featcache.train import TrainConfig, check_store_run, load_splits, select_rows, train_mode


@dataclass
class SeedSweep:
    """What `train_decoder` returns: every run's results (combination by combination in a grid, seeds within)
    and their aggregate (in a grid, `grid_summary`'s)."""

    out: Path
    results: list[dict]
    summary: dict


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (or both, ``"0,3-5"``) -> a list of distinct seeds."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if 0 <= hi < lo:
                    raise OptionError(f"--seeds {text!r}: the range {part} runs backwards; write it {hi}-{lo}")
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise OptionError(f"--seeds {text!r} is not a list like 0,1,2 or a range like 0-4") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise OptionError(f"--seeds {text!r} must name distinct non-negative seeds, e.g. 0,1,2")
    return seeds


def run_dir(out: Path, seed: int, combination: str | None = None) -> Path:
    """``OUT/seed-K``, or in a grid ``OUT/COMBINATION/seed-K``."""
    return (out / combination if combination else out) / f"seed-{seed}"


def combination_name(lr: float, weight_decay: float) -> str:
    """The folder of one (learning rate, weight decay) of a grid: ``lr-2e-4_wd-1e-4``."""
    return f"lr-{number_name(lr)}_wd-{number_name(weight_decay)}"


def parse_numbers(text: str, option: str) -> list[float]:
    """``"1e-4,2e-4"`` -> distinct numbers whose folder names differ too (`number_name`)."""
    values = list(parse_list(text, option, float))
    names = [number_name(v) for v in values]
    if len(set(names)) != len(names):
        raise OptionError(f"{option} {text!r} names a value twice (values are told apart to 6 significant digits)")
    return values


def train_decoder(
    store_path: str,
    cfg: TrainConfig,
    seeds: list[int],
    out: Path,
    device: str = "auto",
    progress: bool = True,
    encoder: str | None = None,
    checkpoint_seconds: float = 60.0,
    grouped: bool | None = None,
    lrs: list[float] | None = None,
    weight_decays: list[float] | None = None,
    cuda_graphs: bool = True,
) -> SeedSweep:
    """Train the C-mode decoder of ``cfg`` once per seed (and per learning rate and weight decay) from the store;
    write every run's outputs.

    Per seed: ``OUT/seed-K/results.json``, ``decoder.pt`` (best epoch, with the store's
    provenance) and ``loss_curve.png``; over seeds: ``OUT/summary.json`` and ``OUT/summary.csv``.
    ``lrs`` x ``weight_decays`` (None: ``cfg``'s one value), when either holds several, is a grid:
    every combination runs every seed, into ``OUT/lr-2e-4_wd-1e-4/seed-K/``, and the summary gives
    each combination's mean ± std and, per seed, the combination of lowest validation loss with its
    test metrics (`grid_summary`), with ``OUT/runs.csv`` and ``OUT/grid_iou.png``.
    ``grouped``: every pending run trains together as one grouped network (`fit_group`; halved
    while the GPU runs out of memory), else one by one; None: grouped on CUDA; on the CPU seeds one
    by one (grouping them measured slower) but a grid's combinations of each seed grouped (measured
    faster); see RESULTS.md.
    ``encoder`` (a weights file, imagenet or random), when given, must be the store's encoder.
    ``cuda_graphs``: on CUDA, replay each epoch as a CUDA graph (`featcache.graphs`); False runs eagerly.
    Resumable: a run whose ``results.json`` exists for the same configuration is not trained
    again, and interrupted runs continue from ``OUT/resume-*.pt`` (written at most every
    ``checkpoint_seconds``).
    """
    lrs = list(lrs) if lrs else [cfg.lr]
    weight_decays = list(weight_decays) if weight_decays else [cfg.weight_decay]
    grid = len(lrs) > 1 or len(weight_decays) > 1
    combinations = [(lr, wd) for lr in lrs for wd in weight_decays]
    for lr, wd in combinations:
        dataclasses.replace(cfg, lr=lr, weight_decay=wd).validate()
    ensure_writable_dir(out)
    dist = Distributed.from_env(device)
    dev = dist.device
    # On the CPU a grid groups each seed's combinations (measured faster, RESULTS.md); its seeds stay apart.
    per_seed = grouped is None and dev.type == "cpu" and grid
    grouped = dev.type == "cuda" if grouped is None else grouped
    out = Path(out)
    # A run: (learning rate, weight decay, seed); its folder and identity follow.
    every_run = [(lr, wd, seed) for lr, wd in combinations for seed in seeds]

    def directory(run: tuple[float, float, int]) -> Path:
        return run_dir(out, run[2], combination_name(run[0], run[1]) if grid else None)

    finished: dict[tuple[float, float, int], dict] = {}
    with FeatureStore.open(store_path) as store:
        if encoder is not None:
            prov = store.meta["encoder"]
            at_hand = encoder_like(prov, encoder)
            store.check_encoder(encoder_provenance(at_hand))
            check_encoder_matches(store, at_hand, dev)
        # Refused here, before a progress bar; a capped validation size is said once, not per seed.
        plan = cfg.plan(store)
        check_store_run(store, cfg)
        if plan.note:
            err_console.print(plan.note)
        cfg = dataclasses.replace(cfg, val_size=plan.val_size)

        def run_cfg(run: tuple[float, float, int]) -> TrainConfig:
            return dataclasses.replace(cfg, lr=run[0], weight_decay=run[1], seed=run[2])

        def identity(run: tuple[float, float, int]) -> dict:
            # The device type too: CPU and CUDA random generators cannot take each other's state.
            return {
                "config": dataclasses.asdict(run_cfg(run)),
                "device_type": dev.type,
                "weights_sha256": store.meta["encoder"]["weights_sha256"],
                "dataset": store.meta["dataset"]["fingerprint"],
            }

        for run in every_run:
            done = finished_run(directory(run), identity(run))
            if done is not None:
                err_console.print(f"{directory(run)}: already finished, kept")
                finished[run] = done
        # torchrun: each rank takes its share of the runs first, then groups them.
        pending = [r for r in every_run if r not in finished][dist.rank :: dist.world_size]
        if per_seed:
            groups = [g for g in ([r for r in pending if r[2] == seed] for seed in seeds) if g]
        else:
            groups = [pending] if grouped and pending else [[r] for r in pending]
        with progress_bar("epochs", disable=not progress or not dist.is_main) as bar:
            while groups:
                group = groups.pop(0)
                checkpointer = Checkpointer(
                    out / f"resume-{group_name(group, grid)}.pt",
                    {"runs": [identity(r) for r in group]},
                    checkpoint_seconds,
                )
                label = f"C size {cfg.size} {runs_label(group, grid)}"
                try:
                    outputs = train_mode(
                        store,
                        "C",
                        [run_cfg(r) for r in group],
                        plan,
                        {},
                        dev,
                        epoch_row(bar, label, plan.epochs),
                        checkpointer,
                        None if cuda_graphs else False,
                    )
                except torch.OutOfMemoryError:
                    if len(group) == 1:
                        raise FeatcacheError(
                            f"one run at size {cfg.size} does not fit in {dev}'s memory; use --device cpu"
                        ) from None
                    # Several groups where memory asks: the halves start again (this group's state cannot serve them).
                    checkpointer.done()
                    torch.cuda.empty_cache()
                    half = len(group) // 2
                    groups[:0] = [group[:half], group[half:]]
                    err_console.print(
                        f"{len(group)} runs together do not fit in {dev}'s memory: training them in halves"
                    )
                    continue
                for run, output in zip(group, outputs, strict=True):
                    output.results["store_identity"] = identity(run)
                    write_run(directory(run), output.results, output.checkpoint)
                    finished[run] = output.results
                    if progress:  # a line per run that stays in logs, where the bar leaves nothing
                        r = output.results
                        err_console.print(
                            f"C size {cfg.size} {runs_label([run], grid)}: test IoU {r['test']['iou']:.4f}, best epoch "
                            f"{r['best_epoch']}, "
                            f"{r['train_seconds']:.1f} s -> {directory(run)}",
                            highlight=False,
                        )
                checkpointer.done()
    gathered = dist.gather_objects(finished)
    dist.close()
    if not dist.is_main:
        return SeedSweep(out, list(finished.values()), {})
    for part in gathered:
        finished.update(part)
    results = [finished[r] for r in every_run]
    head = {"mode": "C", "size": cfg.size, "augment": cfg.augment, "decoder": cfg.decoder, "store": str(store_path)}
    if not grid:
        summary = {**head, **aggregate(results)}
        write_json(out / "summary.json", summary)
        write_runs_csv(results, out / "summary.csv")
        return SeedSweep(out, results, summary)
    summary = {**head, **grid_summary(results, combinations, seeds)}
    for entry in summary["grid"]:
        entry["dir"] = combination_name(entry["lr"], entry["weight_decay"])
    write_json(out / "summary.json", summary)
    write_grid_csv(summary, out / "summary.csv")
    write_runs_csv(results, out / "runs.csv", optimiser=True)
    plot_grid(summary, out / "grid_iou.png", f"C · {cfg.size} images · {len(seeds)} seeds")
    return SeedSweep(out, results, summary)


def group_name(group: list[tuple[float, float, int]], grid: bool) -> str:
    """The resume file's name of a group of runs: its seeds as today, or in a grid its one run, or a digest."""
    if not grid:
        return "-".join(str(seed) for _, _, seed in group)
    if len(group) == 1:
        lr, wd, seed = group[0]
        return f"{combination_name(lr, wd)}-seed-{seed}"
    digest = hashlib.sha256(json.dumps([list(r) for r in group]).encode()).hexdigest()[:12]
    return f"grid-{digest}"


def runs_label(group: list[tuple[float, float, int]], grid: bool) -> str:
    """``seeds 0-1`` or, in a grid, ``lr 2e-4 wd 1e-4 seed 0`` / ``12 runs of the grid``."""
    if not grid:
        seeds = [seed for _, _, seed in group]
        return f"seed{'s' if len(seeds) > 1 else ''} {'-'.join(map(str, seeds))}"
    if len(group) == 1:
        lr, wd, seed = group[0]
        return f"lr {number_name(lr)} wd {number_name(wd)} seed {seed}"
    return f"{len(group)} runs of the grid"


def finished_run(directory: Path, identity: dict) -> dict | None:
    """The results of a finished run of the same identity in ``directory``; refuses one of another."""
    path = directory / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if results.get("store_identity") != identity:
        raise FeatcacheError(
            f"{directory} holds a finished run of another configuration; choose another --out or delete it"
        )
    return results


def write_run(directory: Path, result: dict, checkpoint: dict | None) -> None:
    """results.json, the checkpoint (if any) and the loss curve of one run, each written atomically."""
    write_json(directory / "results.json", result)
    if checkpoint is not None:
        torch_save(checkpoint, directory / "decoder.pt")
    plot_loss_curve(
        result["history"],
        result["best_epoch"],
        directory / "loss_curve.png",
        f"{result['mode']} · {result['size']} images · seed {result['seed']}",
    )


CASE_IMAGES = 3


@dataclass
class CompareConfig:
    """What ``featcache compare-e2e`` takes; None epochs/batch/val follow the study's protocol."""

    store: str
    out: Path
    encoder: str | None = None
    e_init: str | None = None
    sizes: tuple[int, ...] = (2000, 160, 80, 40, 20, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = tuple(MODES)
    epochs: int | None = None
    batch_size: int | None = None
    val_size: int | None = None
    lr: float | tuple[float, ...] = 2e-4  # several: a grid for grid_modes, the others train at the first
    augment: str = "exact"
    device: str = "auto"
    layers: tuple[int, ...] | None = None  # the stored blocks every mode reads (None: all)
    grid_modes: tuple[str, ...] = ("C",)  # the modes that train every learning rate of a list
    cuda_graphs: bool = True  # on CUDA, each epoch replayed as a CUDA graph; False: eager (debugging)

    @property
    def lrs(self) -> tuple[float, ...]:
        return tuple(self.lr) if isinstance(self.lr, tuple | list) else (self.lr,)

    def mode_lrs(self, mode: str) -> tuple[float, ...]:
        """The learning rates ``mode`` trains at: every one for a grid mode, else the first."""
        return self.lrs if mode in self.grid_modes else self.lrs[:1]

    def validate(self) -> None:
        unknown = [m for m in (*self.modes, *self.grid_modes) if m not in MODES]
        if unknown or not self.modes:
            raise OptionError(
                f"--modes {','.join(self.modes)} --grid-modes {','.join(self.grid_modes)}: "
                f"choose from {', '.join(MODES)}"
            )
        if not self.sizes or min(self.sizes) < 1:
            raise OptionError(f"--sizes {self.sizes} must be positive training-set sizes")


@dataclass
class Comparison:
    """Every run's results and the report (None on torchrun ranks other than 0, which gathers)."""

    out: Path
    results: list[dict]
    report: Path | None


def parse_list(text: str, option: str, kind: type = int) -> tuple:
    """``"a,b,c"`` -> a tuple of ``kind`` values (empty items dropped); names the item ``kind`` cannot take."""
    values = []
    for item in filter(None, (v.strip() for v in text.split(","))):
        try:
            values.append(kind(item))
        except ValueError:
            what = {int: "a whole number", float: "a number"}.get(kind, f"a {kind.__name__}")
            raise OptionError(f"{option} {text!r}: {item!r} is not {what}; write a comma-separated list") from None
    if not values:
        raise OptionError(f"{option} is empty; give a comma-separated list")
    return tuple(values)


def _encoders(store: FeatureStore, cfg: CompareConfig, device: torch.device) -> tuple[AnyEncoder, AnyEncoder]:
    """(self-supervised encoder = the store's, proven by re-encoding a sample on ``device``; the encoder E and FI
    start from), both reading the blocks ``cfg.layers`` of the store."""
    prov = store.meta["encoder"]
    layers = [store.layers[p] for p in store.layer_positions(cfg.layers)]
    if cfg.encoder is not None:
        ss = encoder_like(prov, cfg.encoder, layers)
        store.check_encoder(encoder_provenance(ss))
    else:
        ss = rebuild_encoder(prov, layers=layers)
    check_encoder_matches(store, ss, device)
    if cfg.e_init is not None:
        init = encoder_like(prov, cfg.e_init, layers)
    elif prov["source"].get("kind") == "featcache" and prov["source"].get("init"):
        start = prov["source"]["init"]
        init = rebuild_encoder({**prov, "source": start, "weights_sha256": start["weights_sha256"]}, layers=layers)
    else:
        init = ss  # no pretraining recorded: E starts where F is frozen
    return ss, init


def compare_e2e(cfg: CompareConfig, progress: bool = True) -> Comparison:
    """Every (mode, size, seed) run on the same subsets and protocol, then the report; a list of learning rates
    adds every one of them for the grid modes (`CompareConfig.mode_lrs`), each in ``runs/MODE/size-N/lr-X/``."""
    from featcache.report import write_report

    cfg.validate()
    ensure_writable_dir(cfg.out)
    dist = Distributed.from_env(cfg.device)
    device = dist.device
    results: list[dict] = []
    with FeatureStore.open(cfg.store) as store:
        ss, init = _encoders(store, cfg, device)
        encoders = {"ssl": ss, "init": init}
        n_train = len(store.indices("train"))
        too_big = [s for s in cfg.sizes if s > n_train]
        if too_big:
            raise FeatcacheError(f"--sizes {too_big} exceed the training split of {cfg.store} ({n_train} images)")
        # Every size's plan first: a size or --val-size the store cannot give is refused before any run.
        plans = {}
        for size in cfg.sizes:
            plans[size] = TrainConfig(
                size=size,
                augment=cfg.augment,
                epochs=cfg.epochs,
                batch_size=cfg.batch_size,
                val_size=cfg.val_size,
                lr=min(cfg.lrs),
            ).plan(store)
            if plans[size].note:
                err_console.print(f"size {size}: {plans[size].note}")
        if any(MODES[m].reads_store for m in cfg.modes):
            check_store_run(store, TrainConfig(size=cfg.sizes[0], augment=cfg.augment))
        # On CUDA the store runs of one size train their seeds (and learning rates) as one grouped network; the
        # rest run one by one. A batch: (mode, size, [(learning rate, seed), ...]).
        grouped = {m: MODES[m].reads_store and device.type == "cuda" for m in cfg.modes}
        batches = [
            (m, s, [(x, j) for x in cfg.mode_lrs(m) for j in cfg.seeds] if grouped[m] else [(lr, k)])
            for s in cfg.sizes
            for lr in cfg.lrs
            for k in cfg.seeds
            for m in cfg.modes
            if lr in cfg.mode_lrs(m) and (not grouped[m] or (lr, k) == (cfg.lrs[0], cfg.seeds[0]))
        ]
        grid = {m: len(cfg.mode_lrs(m)) > 1 for m in cfg.modes}
        graphs = None if cfg.cuda_graphs else False
        # Under torchrun each rank takes every K-th batch of runs; runs are independent and seeded.
        batches = batches[dist.rank :: dist.world_size]
        n_test = len(store.indices("test"))
        case_rows = torch.linspace(0, n_test - 1, min(CASE_IMAGES, n_test)).round().long().unique()
        cases: dict[tuple[str, int], torch.Tensor] = {}
        with progress_bar(disable=not progress or not dist.is_main) as bar:
            overall = bar.add_task("compare-e2e runs", total=sum(len(runs) for _, _, runs in batches))

            def batch_cfgs(mode: str, size: int, lr_seeds: list[tuple[float, int]]) -> list[TrainConfig]:
                augment = cfg.augment if MODES[mode].reads_store else _image_augment(cfg.augment)
                return [
                    TrainConfig(
                        size=size,
                        seed=seed,
                        augment=augment,
                        epochs=cfg.epochs,
                        batch_size=cfg.batch_size,
                        lr=lr,
                        val_size=plans[size].val_size,
                        layers=cfg.layers,
                    )
                    for lr, seed in lr_seeds
                ]

            def batch_row(mode: str, size: int, lr_seeds: list[tuple[float, int]]) -> Callable[[], EpochCallback]:
                seeds = [k for _, k in lr_seeds]
                label = f"{mode} size {size} seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
                if grid[mode]:
                    label += f" lr {','.join(dict.fromkeys(number_name(lr) for lr, _ in lr_seeds))}"
                return lambda: epoch_row(bar, label, plans[size].epochs)

            def record(mode: str, size: int, lr_seeds: list[tuple[float, int]], runs: list) -> None:
                for (lr, seed), run in zip(lr_seeds, runs, strict=True):
                    folder = cfg.out / "runs" / mode / f"size-{size}"
                    write_run(
                        (folder / f"lr-{number_name(lr)}" if grid[mode] else folder) / f"seed-{seed}", run.results, None
                    )
                    results.append(run.results)
                    if seed == cfg.seeds[0] and lr == cfg.lrs[0]:
                        cases[(mode, size)] = (torch.sigmoid(run.test_logits[case_rows, 0]) > 0.5).to(torch.uint8)
                    bar.advance(overall)

            # The store's runs first, all sizes from one read of the store, the sizes at the same time on CUDA
            # (`train_sizes_from_store`); then the encoder modes, one batch after another.
            from_store = [b for b in batches if MODES[b[0]].reads_store]
            if from_store:
                train_sizes_from_store(
                    store,
                    [SizeGroup(plans[s], batch_cfgs(m, s, r), batch_row(m, s, r)) for m, s, r in from_store],
                    device,
                    lambda i, runs: record(*from_store[i], runs),
                    graphs=graphs,
                )
            on_images = [b for b in batches if not MODES[b[0]].reads_store]
            if on_images:
                # The encoder modes' images, also read once for all their runs.
                run_cfgs = [batch_cfgs(*b) for b in on_images]
                every_run = [(c, select_rows(store, plans[c.size], c.seed)) for cs in run_cfgs for c in cs]
                images = load_splits(store, every_run, device, images=True)
                for (mode, size, lr_seeds), cs in zip(on_images, run_cfgs, strict=True):
                    row = batch_row(mode, size, lr_seeds)()
                    runs = train_mode(store, mode, cs, plans[size], encoders, device, row, graphs=graphs, data=images)
                    record(mode, size, lr_seeds, runs)
        gathered = dist.gather_objects((results, cases))
        dist.close()
        if not dist.is_main:
            return Comparison(cfg.out, results, None)
        results = sorted(
            (r for part, _ in gathered for r in part),
            key=lambda r: (
                cfg.sizes.index(r["size"]),
                cfg.lrs.index(r["optimiser"]["lr"]),
                r["seed"],
                cfg.modes.index(r["mode"]),
            ),
        )
        cases = {key: value for _, part in gathered for key, value in part.items()}
        extraction = store.meta.get("extraction") or {}
        context = {
            "store": str(cfg.store),
            "encoder": store.meta["encoder"],
            "e_init": encoder_provenance(init)["source"],
            "layers": list(ss.layers),
            "depth": ss.depth,
            "extraction_seconds": extraction.get("seconds"),
            "extraction_device": extraction.get("device"),
            "n_test": len(store.indices("test")),
            "dataset": store.meta["dataset"],
            "dataset_root": store.meta.get("dataset_root"),
            "image_size": store.image_size,
            "device": str(device),
            "augment": cfg.augment,
            "modes": list(cfg.modes),
            "sizes": list(cfg.sizes),
            "seeds": list(cfg.seeds),
            "epochs": cfg.epochs,
            "lr": cfg.lrs[0],
            "lrs": list(cfg.lrs),
            "grid_modes": [m for m in cfg.modes if grid[m]],
        }
        test_rows = store.indices("test")[case_rows.numpy()]
        case_data = {
            "ids": [store.ids[i] for i in test_rows],
            "images": store.images(test_rows),
            "masks": store.masks(test_rows),
            "predictions": cases,
        }
        report = write_report(results, context, cfg.out, case_data)
    return Comparison(cfg.out, results, report)


def _image_augment(augment: str) -> str:
    """Encoder modes flip images, which is what ``exact`` reproduces; ``none`` stays none."""
    return "none" if augment == "none" else "exact"
