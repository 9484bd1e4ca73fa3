"""A command's runs reported to experiment trackers (``--track``, `featcache.track`), and its command line kept.

`CommandTracking` belongs to one command and output folder. It writes the command line's resolved options
beside the outputs (``OUT/config.toml``, from `Context.invocation`), opens the trackers there (rank 0 only; other
ranks get trackers that do nothing) and starts the command's own run (a sweep's: its configuration, and at the
end its report, summaries and figures), whose children the trained runs are: one MLflow experiment per sweep,
a W&B group, a TensorBoard folder per run. Each trained run is registered with its parameters before training
(`add`), started when its group starts (`epochs`, which wraps the progress callback the epoch loop already
calls and logs each run's losses and seconds per epoch), and ended with its test metrics and files (`finish`).
A run's tracker ids are kept in its folder (`IDS_FILE`): a resumed run continues its tracked run.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from featcache import __version__
from featcache.core.context import Context
from featcache.core.io import atomic_path, write_json
from featcache.core.progress import EpochCallback, EpochEnd
from featcache.models.record import EncoderRecord
from featcache.results.records import RunResults, SelectionRecord
from featcache.store.feature_store import FeatureStore
from featcache.track import Run, Trackers, open_trackers
from featcache.train.config import TrainConfig
from featcache.train.protocol import Plan

#: A run's tracker ids (backend -> id), in its folder.
IDS_FILE = "tracking.json"
#: The resolved options of the command that wrote a folder; ``--config`` reads it back.
CONFIG_FILE = "config.toml"
#: A decoder run's files sent to the trackers when it finishes.
RUN_FILES = ("results.json", "loss_curve.png")


@dataclass
class TrackedRun:
    """What one run is tracked as: its name (unique in the command), parameters, ids file, and the files it
    sends when it finishes (those that exist then); ``kept``: finished before this command (not trained again)."""

    name: str
    params: dict[str, Any]
    ids_file: Path
    files: tuple[Path, ...] = ()
    kept: bool = False


def read_ids(path: Path) -> dict[str, str] | None:
    """The tracker ids kept in ``path`` (None when there are none, or they do not read as such)."""
    try:
        ids = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in ids.items()} if isinstance(ids, dict) else None


def write_config(ctx: Context, path: Path) -> None:
    """The command line's resolved options (`Context.invocation`), on rank 0, when a command line started it."""
    if ctx.invocation is not None and ctx.is_main:
        with atomic_path(path) as tmp:
            tmp.write_text(ctx.invocation.config)


class CommandTracking:
    """One command's tracked runs. Used as a context: an exception ends the runs still open and the command's
    own run as failed (killed on Ctrl-C) and closes the trackers."""

    def __init__(
        self,
        trackers: Trackers,
        *,
        group: str | None,
        tags: dict[str, str],
        resume: bool,
        config_file: Path | None = None,
    ) -> None:
        self.trackers = trackers
        self.group, self.tags, self.resume, self.config_file = group, tags, resume, config_file
        self.command: Run | None = None
        self._runs: dict[Hashable, TrackedRun] = {}
        self._open: dict[Hashable, Run] = {}
        self._finished: set[Hashable] = set()
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        ctx: Context,
        *,
        out: Path,
        command: str,
        config_file: Path | None = None,
        resume: bool = False,
    ) -> CommandTracking:
        """Write ``config_file`` (`write_config`) and open ``ctx.track`` in the folder ``out``; ``command`` names
        the group of the command's runs (with ``out``). ``resume``: runs continue the tracked runs their ids files
        name."""
        if config_file is not None:
            write_config(ctx, config_file)
        tags = {"featcache.command": command, "featcache.out": str(Path(out).resolve())}
        if ctx.invocation is not None:
            tags["featcache.argv"] = shlex.join(ctx.invocation.argv)
        trackers = open_trackers(ctx.track, out=out, rank=ctx.ranks.rank)
        group = f"{command} {Path(out).resolve()}"
        return cls(trackers, group=group, tags=tags, resume=resume, config_file=config_file)

    @classmethod
    def off(cls) -> CommandTracking:
        """Tracking that tracks nothing and writes nothing."""
        return cls(Trackers(), group=None, tags={}, resume=False)

    @property
    def active(self) -> bool:
        """Whether any tracker still listens (none asked for, another rank, or every one failed: False)."""
        return bool(self.trackers.names)

    def start_command(self, run: TrackedRun) -> None:
        """The command's own run, parent of the runs it trains (a sweep's configuration, report and summary)."""
        if self.active:
            self.command = self._start(run)

    def add(self, key: Hashable, run: TrackedRun) -> None:
        """Register a run to be trained (or logged from its results, `log_finished`) under ``key``."""
        self._runs[key] = run

    def _start(self, run: TrackedRun) -> Run:
        ids = read_ids(run.ids_file) if self.resume else None
        started = self.trackers.start_run(
            name=run.name, group=self.group, params=run.params, tags=self.tags, run_ids=ids, parent=self.command
        )
        if started.ids and started.ids != ids:
            write_json(run.ids_file, started.ids)
        return started

    def start(self, keys: Sequence[Hashable]) -> list[Run]:
        """The tracked runs of ``keys``, started now unless they are open already (a group trained again)."""
        runs = []
        for key in keys:
            with self._lock:
                run = self._open.get(key)
            if run is None:
                run = self._start(self._runs[key])
                with self._lock:
                    self._open[key] = run
            runs.append(run)
        return runs

    def epochs(self, keys: Sequence[Hashable], progress: EpochCallback | None = None) -> EpochCallback | None:
        """``progress`` (the epoch loop's callback for the runs ``keys``, trained together in this order), also
        logging each run's ``train_loss``, ``val_loss`` and ``epoch_seconds`` (its share of the epoch's training
        steps, as its results' ``train_seconds`` is) at step = epoch; starts the runs."""
        if not self.active:
            return progress
        runs = self.start(keys)

        def log(end: EpochEnd) -> None:
            share = {} if end.seconds is None else {"epoch_seconds": end.seconds / len(runs)}
            for run, train, val in zip(runs, end.train_losses, end.val_losses, strict=True):
                run.log_epoch(epoch=end.epoch, metrics={"train_loss": train, "val_loss": val, **share})
            if progress is not None:
                progress(end)

        return log

    def finish(self, key: Hashable, metrics: Mapping[str, float], files: Iterable[Path] = ()) -> None:
        """The run ``key`` is written: its ``metrics``, its files (`TrackedRun.files` and ``files``), its end."""
        with self._lock:
            run = self._open.pop(key, None)
            self._finished.add(key)
        if run is None:
            return
        run.log_metrics(metrics)
        for path in (*self._runs[key].files, *files):
            if path.exists():
                run.log_artifact(path)
        run.end("finished")

    def log_finished(self, key: Hashable, results: RunResults) -> None:
        """A run this process did not train (another torchrun rank's), or a kept one (`TrackedRun.kept`) that no
        tracker has yet (no ids file): logged from its results, per-epoch losses without seconds. Runs this
        process tracked are left alone."""
        run = self._runs.get(key)
        with self._lock:
            if not self.active or run is None or key in self._open or key in self._finished:
                return
        if run.kept and run.ids_file.exists():
            return
        tracked = self._start(run)
        history = results.history
        for epoch, (train, val) in enumerate(zip(history.train_loss, history.val_loss, strict=True), start=1):
            tracked.log_epoch(epoch=epoch, metrics={"train_loss": train, "val_loss": val})
        with self._lock:
            self._open[key] = tracked
        self.finish(key, run_metrics(results))

    def end(self, files: Iterable[Path] = ()) -> None:
        """The command's run gets ``files`` (those that exist) and ends; the trackers close."""
        if self.command is not None:
            for path in files:
                if Path(path).exists():
                    self.command.log_artifact(path)
            self.command.end("finished")
        self.trackers.close()

    def __enter__(self) -> CommandTracking:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            return
        status = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        with self._lock:
            runs, self._open = list(self._open.values()), {}
        for run in [*runs, *([self.command] if self.command is not None else [])]:
            run.end(status)
        self.trackers.close()


def track_checkpoint(ctx: Context, *, checkpoint: Path, command: str, params: dict, resume: bool) -> CommandTracking:
    """The tracking of a command that trains one run into a ``checkpoint`` file (pretrain): the trackers in its
    folder, its resolved options and tracker ids beside it (``STEM_config.toml``, ``STEM_tracking.json``), the
    run registered under the key ``command`` and named ``STEM``."""
    out = Path(checkpoint)
    config = out.with_name(f"{out.stem}_config.toml")
    tracking = CommandTracking.open(ctx, out=out.parent, command=command, config_file=config, resume=resume)
    tracking.add(command, TrackedRun(out.stem, params, out.with_name(f"{out.stem}_tracking.json")))
    return tracking


def decoder_params(
    store: FeatureStore,
    cfg: TrainConfig,
    *,
    mode: str,
    plan: Plan,
    encoder: EncoderRecord,
    selection: SelectionRecord | None = None,
) -> dict[str, Any]:
    """A decoder run's parameters as trackers record them: the run (mode, size, seed, optimiser, protocol), the
    blocks it reads, its encoder's record, the store (path and fingerprint) and featcache's version; for Tk and
    Pk the trained blocks and any LoRA adapters, and the label selection that chose its images, if any."""
    params = {
        "mode": mode,
        "size": cfg.size,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "momentum": cfg.momentum,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "val_size": plan.val_size,
        "augment": cfg.augment,
        "decoder": cfg.decoder,
        "eval_size": cfg.eval_size,
        "layers": [store.layers[p] for p in store.layer_positions(cfg.layers)],
        "encoder": encoder.to_json(),
        "store": str(store.path),
        "store_fingerprint": store.record.fingerprint(),
        "dataset_fingerprint": store.record.dataset.fingerprint,
        "featcache_version": __version__,
    }
    if cfg.train_blocks:
        params.update(train_blocks=cfg.train_blocks, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)
    if selection is not None:
        params["selection"] = selection.to_json()
    return params


def run_metrics(results: RunResults) -> dict[str, float]:
    """A decoder run's once-per-run values: ``test/<metric>`` (study convention), the kept epoch and its
    validation loss, and the seconds of training steps alone and with validation."""
    return {
        **{f"test/{name}": value for name, value in results.test.as_dict().items()},
        "best_epoch": results.best_epoch,
        "best_val_loss": results.best_val_loss,
        "train_seconds": results.train_seconds,
        "total_seconds": results.total_seconds,
    }


def run_files(directory: Path) -> tuple[Path, ...]:
    """A decoder run's files (`RUN_FILES`) in its folder."""
    return tuple(Path(directory) / name for name in RUN_FILES)


def folder_files(folder: Path, names: Iterable[str] = (), patterns: Iterable[str] = ("*.png",)) -> list[Path]:
    """The files ``names`` of ``folder`` and those matching ``patterns`` there (not in subfolders), sorted."""
    found = {Path(folder) / name for name in names}
    for pattern in patterns:
        found.update(p for p in Path(folder).glob(pattern) if p.is_file())
    return sorted(found)
