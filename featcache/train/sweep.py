"""train-decoder: C-mode (or Tk) runs of one size over seeds (and a grid of learning rates and weight decays), in
three phases: `plan_sweep` (checks, identities, finished runs, groups), `run_sweep` (train and write each run) and
`write_sweep` (the summary over seeds)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from featcache import __version__
from featcache.core.context import Context
from featcache.core.errors import FeatcacheError
from featcache.core.io import ensure_writable_dir, write_json
from featcache.core.progress import epoch_row, progress_bar
from featcache.core.runtime import err_console
from featcache.models.record import record_of
from featcache.models.spec import AnyEncoder, EncoderSpec
from featcache.results.export import write_grid_csv, write_runs_csv
from featcache.results.figures import plot_grid
from featcache.results.records import RunEncoder, RunResults
from featcache.results.seed_figure import SEEDS_FIGURE, plot_seeds
from featcache.results.stats import SELECTED, aggregate, grid_summary, number_name, select_on_validation
from featcache.store.encoder_check import check_encoder_matches
from featcache.store.feature_store import FeatureStore
from featcache.train.config import RunKey, SweepConfig, TrainConfig
from featcache.train.outputs import combination_name, finished_run, group_name, run_dir, runs_label, write_run
from featcache.train.protocol import Plan
from featcache.train.resume import Checkpointer
from featcache.train.rows import check_store_run
from featcache.train.run import RunOutput
from featcache.train.run_lock import locks_out
from featcache.train.selections import Chosen, choose_subsets
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


@dataclass
class SeedSweep:
    """What `train_decoder` returns: every run's results (combination by combination in a grid, seeds within)
    and their aggregate (in a grid, `grid_summary`'s); an empty summary on torchrun ranks other than 0."""

    out: Path
    results: list[RunResults]
    summary: dict


@dataclass
class SweepPlan:
    """A sweep resolved against its store: the protocol's `Plan`, each run's identity (what a finished run must
    match to be kept), the runs finished already, the groups left to train (this rank's share), and each seed's
    label selection (`choose_subsets`; empty when none was asked for)."""

    cfg: SweepConfig
    plan: Plan
    identities: dict[RunKey, dict]
    finished: dict[RunKey, RunResults]
    groups: list[list[RunKey]]
    encoder: RunEncoder | None = None  # the store's, which every run's results name
    encoders: dict[str, AnyEncoder] = field(default_factory=dict)
    chosen: dict[int, Chosen] = field(default_factory=dict)

    def run_config(self, key: RunKey) -> TrainConfig:
        """The `TrainConfig` of a run: the plan's validation size, and its seed's selected training images."""
        chosen = self.chosen.get(key.seed)
        return self.cfg.run_config(key, self.plan.val_size, train_ids=chosen.train_ids if chosen else None)

    tracking: CommandTracking = field(default_factory=CommandTracking.off)

    def directory(self, key: RunKey) -> Path:
        """``OUT/seed-K``, or in a grid ``OUT/lr-X_wd-Y/seed-K``."""
        combination = combination_name(key.lr, key.weight_decay) if self.cfg.grid else None
        return run_dir(self.cfg.out, key.seed, combination)


@locks_out("the run folder")
def train_decoder(cfg: SweepConfig, *, ctx: Context | None = None) -> SeedSweep:
    """Train the decoder of ``cfg`` (mode C; with ``train_blocks`` k, mode Tk) once per seed (and per learning
    rate and weight decay) from the store; write every run's outputs and the summary.

    Per seed: ``OUT/seed-K/results.json``, ``decoder.pt`` (best epoch, with the store's record) and
    ``loss_curve.png``; over seeds: ``OUT/summary.json`` and ``OUT/summary.csv``. A grid runs every combination
    at every seed into ``OUT/lr-2e-4_wd-1e-4/seed-K/``; its summary gives each combination's mean ± std and, per
    seed, the combination of lowest validation loss with its test metrics (`grid_summary`), with ``OUT/runs.csv``
    and ``OUT/grid_iou.png``. Resumable: a run whose ``results.json`` exists for the same configuration is not
    trained again, and interrupted runs continue from ``OUT/resume-*.pt``. ``ctx``: device, CUDA graphs,
    progress, resume-state interval and torchrun ranks (default: `Context.resolve`).
    """
    cfg.validate()
    ensure_writable_dir(cfg.out)
    ctx = ctx or Context.resolve()
    with FeatureStore.open(cfg.store) as store:
        planned = plan_sweep(store, cfg, ctx)
        planned.tracking = track_sweep(store, planned, ctx)
        with planned.tracking:
            run_sweep(store, planned, ctx)
    gathered = ctx.ranks.gather_objects(planned.finished)
    ctx.ranks.close()
    if not ctx.is_main:
        return SeedSweep(cfg.out, list(planned.finished.values()), {})
    for part in gathered:
        planned.finished.update(part)
    sweep = write_sweep(cfg, [planned.finished[key] for key in cfg.keys()])
    end_tracking(planned)
    return sweep


def plan_sweep(store: FeatureStore, cfg: SweepConfig, ctx: Context) -> SweepPlan:
    """Everything refused before any training (the encoder at hand, sizes, flip views), the runs already
    finished in ``cfg.out`` (kept), and this rank's runs left, grouped: on CUDA every pending run as one grouped
    network (unless ``cfg.grouped`` is False); on the CPU one run at a time, but a grid's combinations of each
    seed together (measured faster, RESULTS.md). Tk runs (``--train-blocks``) train one at a time, from the store's
    encoder (rebuilt from its record unless ``cfg.encoder`` names it)."""
    encoders = {}
    if cfg.encoder is not None or cfg.train_blocks:
        record = store.record.encoder
        spec = EncoderSpec.like(record, cfg.encoder) if cfg.encoder is not None else EncoderSpec.recorded(record)
        at_hand = spec.build()
        store.check_encoder(record_of(at_hand))
        check_encoder_matches(store, at_hand, ctx.device)
        encoders["ssl"] = at_hand
    plan = cfg.run_config(cfg.keys()[0]).plan(store)
    if cfg.train_blocks:
        check_top_run(store, cfg.mode, cfg.run_config(cfg.keys()[0]))
    else:
        check_store_run(store, cfg.run_config(cfg.keys()[0]))
    if plan.note:  # said once, not per seed
        err_console.print(plan.note)
    run_encoder = RunEncoder.of(store.record.encoder, trained=bool(cfg.train_blocks))
    planned = SweepPlan(cfg, plan, {}, {}, [], encoder=run_encoder, encoders=encoders, chosen=_chosen(store, cfg, ctx))
    planned.identities = {key: _identity(store, planned.run_config(key), ctx) for key in cfg.keys()}
    for key in cfg.keys():
        done = finished_run(planned.directory(key), planned.identities[key])
        if done is not None:
            err_console.print(f"{planned.directory(key)}: already finished, kept")
            planned.finished[key] = done
    # torchrun: each rank takes its share of the runs first, then groups them.
    pending = [k for k in cfg.keys() if k not in planned.finished][ctx.ranks.rank :: ctx.ranks.world_size]
    if cfg.train_blocks:
        planned.groups = [[k] for k in pending]
    elif cfg.grouped is None and ctx.device.type == "cpu" and cfg.grid:
        planned.groups = [g for g in ([k for k in pending if k.seed == seed] for seed in cfg.seeds) if g]
    elif (ctx.device.type == "cuda" if cfg.grouped is None else cfg.grouped) and pending:
        planned.groups = [pending]
    else:
        planned.groups = [[k] for k in pending]
    return planned


def _chosen(store: FeatureStore, cfg: SweepConfig, ctx: Context) -> dict[int, Chosen]:
    """Each seed's label selection (`choose_subsets`), or nothing when none was asked for."""
    if cfg.selection_label is None:
        return {}
    chosen = choose_subsets(
        store,
        selections=[cfg.selection_label],
        sizes=[cfg.size],
        seeds=cfg.seeds,
        layers=cfg.layers,
        selection_file=cfg.selection_file,
        device=ctx.device,
        option="--size",
    )
    return {seed: chosen[(cfg.selection_label, cfg.size, seed)] for seed in cfg.seeds}


def _identity(store: FeatureStore, run_cfg, ctx: Context) -> dict:
    """What a finished run's ``store_identity`` must be to be kept: its configuration, the device type (CPU and
    CUDA random generators cannot take each other's state), the encoder's hash and the dataset's fingerprint."""
    identity = {
        "config": asdict(run_cfg),
        "device_type": ctx.device.type,
        "weights_sha256": store.record.encoder.weights_sha256,
        "dataset": store.record.dataset.fingerprint,
    }
    if store.record.tail_tokens:  # the cached tokens Tk trains from
        identity["tail_tokens"] = store.record.tail_tokens
    return json.loads(json.dumps(identity))  # as results.json reads back: tuples (layers, train_ids) as lists


def track_sweep(store: FeatureStore, planned: SweepPlan, ctx: Context) -> CommandTracking:
    """``OUT/config.toml``, and the sweep's runs registered with the trackers of ``ctx`` (`CommandTracking`): the
    sweep's own run ``train-decoder`` and one run per seed (and combination), named by its folder; a resumed run
    continues its tracked run (ids in ``OUT/tracking.json`` and each run's folder)."""
    cfg = planned.cfg
    tracking = CommandTracking.open(
        ctx, out=cfg.out, command="train-decoder", config_file=cfg.out / CONFIG_FILE, resume=True
    )
    if tracking.active:
        params = {**asdict(cfg), "store_fingerprint": store.record.fingerprint(), "featcache_version": __version__}
        tracking.start_command(TrackedRun("train-decoder", params, cfg.out / IDS_FILE))
        for key in cfg.keys():
            directory = planned.directory(key)
            chosen = planned.chosen.get(key.seed)
            params = decoder_params(
                store,
                planned.run_config(key),
                mode=key.mode,
                plan=planned.plan,
                encoder=store.record.encoder,
                selection=chosen.record if chosen else None,
            )
            name = directory.relative_to(cfg.out).as_posix()
            kept = key in planned.finished
            tracking.add(key, TrackedRun(name, params, directory / IDS_FILE, run_files(directory), kept=kept))
    return tracking


def end_tracking(planned: SweepPlan) -> None:
    """The runs no tracker has yet (other ranks', or finished before tracking was asked for) logged from their
    results; the sweep's run gets the summary, the figures and ``config.toml``, and ends."""
    for key in planned.cfg.keys():
        planned.tracking.log_finished(key, planned.finished[key])
    files = ("summary.json", "summary.csv", "runs.csv", CONFIG_FILE)
    planned.tracking.end(folder_files(planned.cfg.out, files))


def run_sweep(store: FeatureStore, planned: SweepPlan, ctx: Context) -> None:
    """Train the planned groups one after another, writing each run as it finishes (into ``planned.finished``);
    a group that runs out of GPU memory is split in halves that start again."""
    cfg, groups = planned.cfg, list(planned.groups)
    with progress_bar("epochs", disable=not ctx.progress or not ctx.is_main) as bar:
        while groups:
            group = groups.pop(0)
            checkpointer = Checkpointer(
                cfg.out / f"resume-{group_name(group, cfg.grid)}.pt",
                {"runs": [planned.identities[k] for k in group]},
                ctx.checkpoint_seconds,
            )
            row = epoch_row(bar, f"{cfg.mode} size {cfg.size} {runs_label(group, cfg.grid)}", planned.plan.epochs)
            row = planned.tracking.epochs(group, row)
            outputs = _train_or_halve(store, planned, group, ctx=ctx, progress=row, checkpointer=checkpointer)
            if outputs is None:
                groups[:0] = [group[: len(group) // 2], group[len(group) // 2 :]]
                continue
            for key, output in zip(group, outputs, strict=True):
                _keep(planned, key, output, ctx=ctx)
            checkpointer.done()


def _train_or_halve(
    store: FeatureStore, planned: SweepPlan, group: list[RunKey], *, ctx: Context, progress, checkpointer: Checkpointer
) -> list[RunOutput] | None:
    """The group's outputs; None when it does not fit in GPU memory and should train in halves (its resume state
    cannot serve them and is dropped). One run that does not fit ends the sweep with the fix."""
    cfgs = [planned.run_config(k) for k in group]
    try:
        return train_any_mode(
            store,
            planned.cfg.mode,
            cfgs,
            plan=planned.plan,
            encoders=planned.encoders,
            ctx=ctx,
            progress=progress,
            checkpointer=checkpointer,
        )
    except torch.OutOfMemoryError:
        if len(group) == 1:
            raise FeatcacheError(
                f"one run at size {planned.cfg.size} does not fit in {ctx.device}'s memory; use --device cpu"
            ) from None
    checkpointer.done()
    torch.cuda.empty_cache()
    err_console.print(f"{len(group)} runs together do not fit in {ctx.device}'s memory: training them in halves")
    return None


def _keep(planned: SweepPlan, key: RunKey, output: RunOutput, *, ctx: Context) -> None:
    """Write a finished run and say so in a line that stays in logs (where the progress bar leaves nothing)."""
    output.results.store_identity = planned.identities[key]
    output.results.encoder = planned.encoder
    if key.seed in planned.chosen:
        output.results.selection = planned.chosen[key.seed].record
    write_run(planned.directory(key), output.results, output.checkpoint)
    planned.finished[key] = output.results
    planned.tracking.finish(key, run_metrics(output.results))
    if ctx.progress:
        r = output.results
        err_console.print(
            f"{key.mode} size {planned.cfg.size} {runs_label([key], planned.cfg.grid)}: test IoU {r.test.iou:.4f}, "
            f"best epoch {r.best_epoch}, {r.train_seconds:.1f} s -> {planned.directory(key)}",
            highlight=False,
        )


def write_sweep(cfg: SweepConfig, results: list[RunResults]) -> SeedSweep:
    """``summary.json``, ``summary.csv`` and ``seeds.png`` (every seed's loss curves and test scores) over seeds;
    for a grid also ``runs.csv`` and ``grid_iou.png``, and ``seeds.png`` shows each seed's run selected on
    validation."""
    head = {"mode": cfg.mode, "size": cfg.size, "augment": cfg.augment, "decoder": cfg.decoder, "store": str(cfg.store)}
    if cfg.selection_label is not None:
        head["selection"] = cfg.selection_label
    if not cfg.grid:
        summary = {**head, **aggregate(results)}
        write_json(cfg.out / "summary.json", summary)
        write_runs_csv(results, cfg.out / "summary.csv")
        plot_seeds(results, cfg.out / SEEDS_FIGURE, title=f"{cfg.mode} · {cfg.size} images · {len(results)} seeds")
        return SeedSweep(cfg.out, results, summary)
    combinations = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    summary = {**head, **grid_summary(results, combinations, list(cfg.seeds))}
    for entry in summary["grid"]:
        entry["dir"] = combination_name(entry["lr"], entry["weight_decay"])
    write_json(cfg.out / "summary.json", summary)
    write_grid_csv(summary, cfg.out / "summary.csv")
    write_runs_csv(results, cfg.out / "runs.csv", optimiser=True)
    plot_grid(summary, cfg.out / "grid_iou.png", f"{cfg.mode} · {cfg.size} images · {len(cfg.seeds)} seeds")
    chosen = [select_on_validation([r for r in results if r.seed == seed]) for seed in cfg.seeds]
    labels = [f"seed {r.seed}: lr {number_name(r.lr)}, wd {number_name(r.weight_decay)}" for r in chosen]
    plot_seeds(chosen, cfg.out / SEEDS_FIGURE, title=f"{cfg.mode} · {cfg.size} images · {SELECTED}", labels=labels)
    return SeedSweep(cfg.out, results, summary)
