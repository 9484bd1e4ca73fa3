"""compare-e2e: every mode on the same subsets and protocol, then the report, in three phases:
`plan_comparison` (encoders, plans per size, batches of runs), `run_comparison` (the store's runs from one read,
sizes side by side on CUDA; then the encoder modes) and `write_comparison` (the report)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from featcache import __version__
from featcache.core.context import Context
from featcache.core.errors import FeatcacheError
from featcache.core.io import ensure_writable_dir
from featcache.core.machine import Environment
from featcache.core.progress import EpochCallback, epoch_row, progress_bar
from featcache.core.runtime import err_console
from featcache.models.record import EncoderRecord, record_of
from featcache.models.spec import AnyEncoder, EncoderSpec
from featcache.results.figures import Cases
from featcache.results.records import RunEncoder, RunResults
from featcache.results.report import ReportContext, write_report
from featcache.results.stats import number_name
from featcache.results.study import not_the_study
from featcache.store.encoder_check import check_encoder_matches
from featcache.store.feature_store import FeatureStore
from featcache.train.comparison_folder import (
    check_folder,
    claim_folder,
    finished_run,
    sweep_configuration,
    write_case_masks,
    write_comparison_file,
)
from featcache.train.config import CompareConfig, RunKey, TrainConfig
from featcache.train.modes import describe, mode_of, train_blocks_of
from featcache.train.outputs import write_run
from featcache.train.protocol import Plan
from featcache.train.rows import check_store_run, load_splits, select_rows
from featcache.train.run import RunOutput
from featcache.train.run_lock import locks_out
from featcache.train.selections import Chosen, choose_subsets
from featcache.train.sizes import SizeGroup, train_sizes_from_store
from featcache.train.tail_run import check_top_run, train_any_mode
from featcache.train.tracking import (
    CONFIG_FILE,
    IDS_FILE,
    CommandTracking,
    TrackedRun,
    decoder_params,
    folder_files,
    run_files,
    run_metrics,
)

CASE_IMAGES = 3


@dataclass
class Comparison:
    """Every run's results and the report (None on torchrun ranks other than 0, which gathers)."""

    out: Path
    results: list[RunResults]
    report: Path | None


@dataclass
class Batch:
    """Runs of one mode and size that train together: on CUDA a store mode's seeds and learning rates as one
    grouped network, else one run."""

    mode: str
    size: int
    keys: list[RunKey]


@dataclass
class ComparePlan:
    """A comparison resolved against its store: the encoders (``ssl``: the store's; ``init``: where E and FI
    start), each size's `Plan`, this rank's batches and the test rows of the case figure; ``records``: the two
    encoders' records (``ssl`` the store's), which each run's results name; ``configuration`` and ``environment``:
    what ``comparison.json`` keeps; ``chosen``: when it compares label selections, each (selection, size, seed)'s
    training images (`choose_subsets`)."""

    cfg: CompareConfig
    encoders: dict[str, AnyEncoder]
    plans: dict[int, Plan]
    batches: list[Batch]
    case_rows: torch.Tensor
    results: list[RunResults] = field(default_factory=list)
    cases: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    records: dict[str, EncoderRecord] = field(default_factory=dict)
    configuration: dict = field(default_factory=dict)
    environment: Environment | None = None
    chosen: dict[tuple[str, int, int], Chosen] = field(default_factory=dict)

    def is_case_run(self, key: RunKey) -> bool:
        """Whether the report's case figure shows this run's predictions (the first seed, first learning rate,
        random's subsets)."""
        return key.seed == self.cfg.seeds[0] and key.lr == self.cfg.lrs[0] and key.selection == "random"

    def run_encoder(self, mode: str) -> RunEncoder:
        """What a run of ``mode`` records of its encoder (a store mode: the store's)."""
        spec = mode_of(mode)
        return RunEncoder.of(self.records[spec.encoder or "ssl"], trained=spec.trainable)

    tracking: CommandTracking = field(default_factory=CommandTracking.off)

    def run_config(self, mode: str, key: RunKey) -> TrainConfig:
        """A run's `TrainConfig`: encoder modes flip images, which is what ``exact`` reproduces (``none`` stays); Tk
        and Pk train k blocks (through the LoRA adapters, if any); a label selection's runs its chosen images."""
        cfg, k = self.cfg, train_blocks_of(mode)
        on_images = mode_of(mode).source == "encoder"
        augment = ("none" if cfg.augment == "none" else "exact") if on_images else cfg.augment
        chosen = self.chosen.get((key.selection, key.size, key.seed))
        return TrainConfig(
            size=key.size,
            seed=key.seed,
            augment=augment,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            lr=key.lr,
            val_size=self.plans[key.size].val_size,
            layers=None if k else cfg.layers,
            train_blocks=k,
            lora_rank=cfg.lora_rank if k else None,
            lora_alpha=cfg.lora_alpha if k else None,
            train_ids=chosen.train_ids if chosen else None,
        )

    def directory(self, key: RunKey) -> Path:
        """``runs/MODE/size-N/seed-K`` (a grid mode's: ``runs/MODE/size-N/lr-X/seed-K``; comparing selections:
        ``runs/MODE/size-N/[lr-X/]SELECTION/seed-K``)."""
        folder = self.cfg.out / "runs" / key.mode / f"size-{key.size}"
        if self.cfg.is_grid(key.mode):
            folder = folder / f"lr-{number_name(key.lr)}"
        if self.cfg.compares_selections:
            folder = folder / key.selection
        return folder / f"seed-{key.seed}"


@locks_out("the run folder")
def compare_e2e(cfg: CompareConfig, *, ctx: Context | None = None) -> Comparison:
    """Every (mode, size, seed) run on the same subsets and protocol, then the report; a list of learning rates
    adds every one of them for the grid modes (`CompareConfig.mode_lrs`), each in ``runs/MODE/size-N/lr-X/``.
    ``OUT/comparison.json`` keeps the configuration: the same one resumes, keeping the finished runs; another is
    refused unless ``cfg.overwrite`` (`featcache.train.comparison_folder`).
    ``ctx``: device, CUDA graphs, progress and torchrun ranks (default: `Context.resolve`)."""
    cfg.validate()
    ensure_writable_dir(cfg.out)
    ctx = ctx or Context.resolve()
    environment = Environment.start(ctx.device)
    with FeatureStore.open(cfg.store) as store:
        configuration = sweep_configuration(cfg, store, ctx.device)
        resume = check_folder(cfg.out, configuration, overwrite=cfg.overwrite)
        planned = plan_comparison(store, cfg, ctx)
        planned.configuration, planned.environment = configuration, environment
        if ctx.is_main:
            claim_folder(cfg.out, configuration, environment=environment, resume=resume)
        ctx.ranks.broadcast_object(None)  # the other ranks write nothing before rank 0 has claimed the folder
        if resume:
            _keep_finished(planned)
        planned.tracking = track_comparison(store, planned, ctx)
        with planned.tracking:
            run_comparison(store, planned, ctx)
        gathered = ctx.ranks.gather_objects((planned.results, planned.cases))
        ctx.ranks.close()
        if not ctx.is_main:
            return Comparison(cfg.out, planned.results, None)
        planned.results = sorted(
            (r for part, _ in gathered for r in part),
            key=lambda r: (
                cfg.sizes.index(r.size),
                cfg.lrs.index(r.lr),
                r.seed,
                cfg.selection_labels.index(r.selection.strategy if r.selection else "random"),
                cfg.modes.index(r.mode),
            ),
        )
        planned.cases = {key: value for _, part in gathered for key, value in part.items()}
        report = write_comparison(store, planned, ctx)
    end_tracking(planned)
    return Comparison(cfg.out, planned.results, report)


def _encoders(store: FeatureStore, cfg: CompareConfig, device: torch.device) -> dict[str, AnyEncoder]:
    """``ssl``: the store's encoder, proven by re-encoding a sample on ``device``; ``init``: the encoder E and FI
    start from; both reading the blocks ``cfg.layers`` of the store."""
    record = store.record.encoder
    layers = [store.layers[p] for p in store.layer_positions(cfg.layers)]
    if cfg.encoder is not None:
        ssl = EncoderSpec.like(record, cfg.encoder, layers=layers).build()
        store.check_encoder(record_of(ssl))
    else:
        ssl = EncoderSpec.recorded(record, layers=layers).build()
    check_encoder_matches(store, ssl, device)
    start = record.init_record()
    if cfg.e_init is not None:
        init = EncoderSpec.like(record, cfg.e_init, layers=layers).build()
    elif start is not None:
        init = EncoderSpec.recorded(start, layers=layers).build()
    else:
        init = ssl  # no pretraining recorded: E starts where F is frozen
    return {"ssl": ssl, "init": init}


def plan_comparison(store: FeatureStore, cfg: CompareConfig, ctx: Context) -> ComparePlan:
    """Everything refused before any run (the encoder, sizes and validation sizes the store cannot give, flip
    views), each size's plan, and this rank's batches (every K-th under torchrun; runs are independent)."""
    encoders = _encoders(store, cfg, ctx.device)
    n_train = len(store.indices("train"))
    too_big = [s for s in cfg.sizes if s > n_train]
    if too_big:
        raise FeatcacheError(f"--sizes {too_big} exceed the training split of {cfg.store} ({n_train} images)")
    plans = {}
    for size in cfg.sizes:
        probe = TrainConfig(
            size=size,
            augment=cfg.augment,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            val_size=cfg.val_size,
            lr=min(cfg.lrs),
        )
        plans[size] = probe.plan(store)
        if plans[size].note:
            err_console.print(f"size {size}: {plans[size].note}")
    if any(mode_of(m).reads_store for m in cfg.modes):
        check_store_run(store, TrainConfig(size=cfg.sizes[0], augment=cfg.augment))
    for mode in (m for m in cfg.modes if train_blocks_of(m)):
        probe = TrainConfig(size=cfg.sizes[0], augment=cfg.augment, layers=cfg.layers, lora_rank=cfg.lora_rank)
        check_top_run(store, mode, probe)
    chosen = {}
    if cfg.compares_selections:
        chosen = choose_subsets(
            store,
            selections=cfg.selection_labels,
            sizes=cfg.sizes,
            seeds=cfg.seeds,
            layers=cfg.layers,
            selection_file=cfg.selection_file,
            device=ctx.device,
            option="--sizes",
        )
    batches = _batches(cfg, grouped=ctx.device.type == "cuda")[ctx.ranks.rank :: ctx.ranks.world_size]
    n_test = len(store.indices("test"))
    case_rows = torch.linspace(0, n_test - 1, min(CASE_IMAGES, n_test)).round().long().unique()
    records = {"ssl": store.record.encoder, "init": record_of(encoders["init"])}
    return ComparePlan(cfg, encoders, plans, batches, case_rows, records=records, chosen=chosen)


def _keep_finished(planned: ComparePlan) -> None:
    """A resumed sweep: the runs of this rank's batches finished already are kept (their results and case masks),
    and only the others are left to train."""
    batches = []
    for batch in planned.batches:
        pending = []
        for key in batch.keys:
            run_config = asdict(planned.run_config(batch.mode, key))
            done = finished_run(planned.directory(key), run_config, cases=planned.is_case_run(key))
            if done is None:
                pending.append(key)
                continue
            planned.results.append(done[0])
            if done[1] is not None:
                planned.cases[(key.mode, key.size)] = done[1]
        if pending:
            batches.append(Batch(batch.mode, batch.size, pending))
    kept = sum(len(b.keys) for b in planned.batches) - sum(len(b.keys) for b in batches)
    if kept:
        err_console.print(f"{planned.cfg.out}: {kept} runs of this configuration finished already, kept")
    planned.batches = batches


def _batches(cfg: CompareConfig, *, grouped: bool) -> list[Batch]:
    """Every run in batches: size by size, learning rate, seed, then mode; with ``grouped``, a store mode's runs of
    one size (all its seeds and learning rates) as one batch. Each batch holds its runs for every label selection
    (`_per_selection`)."""
    batches = []
    for size in cfg.sizes:
        for lr in cfg.lrs:
            for seed in cfg.seeds:
                for mode in cfg.modes:
                    if lr not in cfg.mode_lrs(mode):
                        continue
                    if not (grouped and mode_of(mode).reads_store):
                        batches.append(Batch(mode, size, [RunKey(mode, size, seed, lr, 1e-4)]))
                    elif (lr, seed) == (cfg.lrs[0], cfg.seeds[0]):
                        keys = [RunKey(mode, size, k, x, 1e-4) for x in cfg.mode_lrs(mode) for k in cfg.seeds]
                        batches.append(Batch(mode, size, keys))
    return _per_selection(batches, cfg.selection_labels)


def _per_selection(batches: list[Batch], labels: tuple[str, ...]) -> list[Batch]:
    """A one-run batch becomes one batch per selection; a grouped batch holds its runs for every selection."""
    out = []
    for batch in batches:
        keys = [[replace(k, selection=label) for k in batch.keys] for label in labels]
        if len(batch.keys) == 1:
            out += [Batch(batch.mode, batch.size, k) for k in keys]
        else:
            out.append(Batch(batch.mode, batch.size, [k for per_label in keys for k in per_label]))
    return out


def track_comparison(store: FeatureStore, planned: ComparePlan, ctx: Context) -> CommandTracking:
    """``OUT/config.toml``, and the comparison's runs registered with the trackers of ``ctx`` (`CommandTracking`):
    its own run ``compare-e2e`` and one run per (mode, size, seed, learning rate, selection), named by its folder
    under ``runs/``. A resumed comparison continues its tracked runs (ids in each run's folder); the runs it kept
    (`_keep_finished`) are not logged again."""
    cfg = planned.cfg
    tracking = CommandTracking.open(
        ctx, out=cfg.out, command="compare-e2e", config_file=cfg.out / CONFIG_FILE, resume=True
    )
    if tracking.active:
        params = {**asdict(cfg), "store_fingerprint": store.record.fingerprint(), "featcache_version": __version__}
        tracking.start_command(TrackedRun("compare-e2e", params, cfg.out / IDS_FILE))
        for key in _every_key(cfg):
            encoder = planned.records[mode_of(key.mode).encoder or "ssl"]
            run_cfg = planned.run_config(key.mode, key)
            chosen = planned.chosen.get((key.selection, key.size, key.seed))
            params = decoder_params(
                store,
                run_cfg,
                mode=key.mode,
                plan=planned.plans[key.size],
                encoder=encoder,
                selection=chosen.record if chosen else None,
            )
            directory = planned.directory(key)
            name = directory.relative_to(cfg.out / "runs").as_posix()
            kept = (directory / "results.json").exists()  # finished before (on any rank): `_keep_finished`
            run = TrackedRun(name, params, directory / IDS_FILE, run_files(directory), kept=kept)
            tracking.add(key, run)
    return tracking


def _every_key(cfg: CompareConfig) -> list[RunKey]:
    """Every run of the comparison, on every rank."""
    return [key for batch in _batches(cfg, grouped=False) for key in batch.keys]


def _key_of(results: RunResults) -> RunKey:
    """The `RunKey` of a run's results."""
    selection = results.selection.strategy if results.selection else "random"
    return RunKey(results.mode, results.size, results.seed, results.lr, results.weight_decay, selection)


def end_tracking(planned: ComparePlan) -> None:
    """The runs other ranks trained logged from their results; the comparison's run gets the report, its table
    and figures and ``config.toml``, and ends."""
    for results in planned.results:
        planned.tracking.log_finished(_key_of(results), results)
    files = ("report.md", "results.csv", "selection.csv", "comparison.json", CONFIG_FILE)
    planned.tracking.end(folder_files(planned.cfg.out, files))


def run_comparison(store: FeatureStore, planned: ComparePlan, ctx: Context) -> None:
    """Train every batch, writing each run as it finishes: the store's runs first, all sizes from one read of the
    store, the sizes at the same time on CUDA (`train_sizes_from_store`); then the encoder modes, whose images are
    read once for all their runs too."""
    with progress_bar(disable=not ctx.progress or not ctx.is_main) as bar:
        overall = bar.add_task("compare-e2e runs", total=sum(len(b.keys) for b in planned.batches))

        def row(batch: Batch) -> EpochCallback:
            seeds = ",".join(str(k.seed) for k in batch.keys)
            label = f"{batch.mode} size {batch.size} seed{'s' if len(batch.keys) > 1 else ''} {seeds}"
            if planned.cfg.is_grid(batch.mode):
                label += f" lr {','.join(dict.fromkeys(number_name(k.lr) for k in batch.keys))}"
            if planned.cfg.compares_selections:
                label += f" {','.join(dict.fromkeys(k.selection for k in batch.keys))}"
            return planned.tracking.epochs(batch.keys, epoch_row(bar, label, planned.plans[batch.size].epochs))

        def record(batch: Batch, outputs: list[RunOutput]) -> None:
            _record(planned, batch, outputs)
            bar.advance(overall, len(outputs))

        from_store = [b for b in planned.batches if mode_of(b.mode).reads_store]
        if from_store:
            groups = [
                SizeGroup(planned.plans[b.size], [planned.run_config(b.mode, k) for k in b.keys], lambda b=b: row(b))
                for b in from_store
            ]
            train_sizes_from_store(store, groups, ctx=ctx, done=lambda i, runs: record(from_store[i], runs))
        for source in ("encoder", "tokens"):  # the images read once for every encoder run, the tokens for Tk's
            batches = [b for b in planned.batches if mode_of(b.mode).source == source]
            if not batches:
                continue
            every_run = [
                (c, select_rows(store, planned.plans[c.size], c.seed, train_ids=c.train_ids))
                for c in _configs(planned, batches)
            ]
            data = load_splits(store, every_run, ctx.device, images=source == "encoder", tokens=source == "tokens")
            for batch in batches:
                cfgs = [planned.run_config(batch.mode, k) for k in batch.keys]
                plan = planned.plans[batch.size]
                outputs = train_any_mode(
                    store,
                    batch.mode,
                    cfgs,
                    plan=plan,
                    encoders=planned.encoders,
                    ctx=ctx,
                    progress=row(batch),
                    data=data,
                )
                record(batch, outputs)


def _configs(planned: ComparePlan, batches: list[Batch]) -> list[TrainConfig]:
    return [planned.run_config(b.mode, k) for b in batches for k in b.keys]


def _record(planned: ComparePlan, batch: Batch, outputs: list[RunOutput]) -> None:
    """Write a batch's runs, keep their results and, for the first seed at the first learning rate, the case
    images' predicted masks."""
    for key, run in zip(batch.keys, outputs, strict=True):
        if (key.selection, key.size, key.seed) in planned.chosen:
            run.results.selection = planned.chosen[(key.selection, key.size, key.seed)].record
        run.results.encoder = planned.run_encoder(key.mode)
        if planned.is_case_run(key):
            masks = (torch.sigmoid(run.test_logits[planned.case_rows, 0]) > 0.5).to(torch.uint8).cpu()
            planned.cases[(key.mode, key.size)] = masks
            write_case_masks(planned.directory(key), masks)
        write_run(planned.directory(key), run.results, None)
        planned.results.append(run.results)
        planned.tracking.finish(key, run_metrics(run.results))


def write_comparison(store: FeatureStore, planned: ComparePlan, ctx: Context) -> Path:
    """The report over every run (rank 0, after gathering), and ``comparison.json`` with the load at the end."""
    cfg, record = planned.cfg, store.record
    ssl = planned.encoders["ssl"]
    extraction = record.extraction
    environment = planned.environment.finish() if planned.environment else None
    if environment is not None:
        write_comparison_file(cfg.out, planned.configuration, environment)
    context = ReportContext(
        store=str(cfg.store),
        n_test=len(store.indices("test")),
        image_size=store.image_size,
        encoder=record.encoder,
        e_init=planned.records["init"].source,
        layers=list(ssl.layers),
        depth=ssl.depth,
        device=str(ctx.device),
        dataset=record.dataset,
        dataset_root=record.dataset_root,
        extraction_seconds=extraction.seconds if extraction else None,
        extraction_device=extraction.device if extraction else None,
        augment=cfg.augment,
        modes=list(cfg.modes),
        mode_descriptions={m: describe(m, planned.run_encoder(m).description) for m in cfg.modes},
        sizes=list(cfg.sizes),
        seeds=list(cfg.seeds),
        epochs=cfg.epochs,
        lr=cfg.lrs[0],
        lrs=list(cfg.lrs),
        grid_modes=[m for m in cfg.modes if cfg.is_grid(m)],
        init_encoder=planned.records["init"],
        not_study=not_the_study(record, store.ids),
        study_lines=cfg.study_lines,
        environment=environment,
    )
    test_rows = store.indices("test")[planned.case_rows.numpy()]
    cases = Cases(
        ids=[store.ids[i] for i in test_rows],
        images=store.images(test_rows),
        masks=store.masks(test_rows),
        predictions=planned.cases,
    )
    return write_report(planned.results, context=context, out=cfg.out, cases=cases)
