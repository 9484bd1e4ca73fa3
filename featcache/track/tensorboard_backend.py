"""TensorBoard: one folder of event files per run, ``OUT/tensorboard/RUN`` (``tensorboard --logdir OUT/tensorboard``).

Per-epoch values are scalars at step = epoch; once-per-run values are scalars at step 0; the parameters are a
session of the HParams dashboard (marked a success when the run finishes); artifacts are images (PNG, JPEG) and text
(Markdown, JSON, CSV) under ``artifacts/``. A resumed run writes into its folder again and purges the events of
the epochs it trains again.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from featcache.track.base import ParamValue, Status, safe_run_name

#: Seconds between the writer's flushes to disk (its own thread writes; a live TensorBoard sees them then).
FLUSH_SECONDS = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEXT_SUFFIXES = (".md", ".json", ".csv", ".txt", ".toml")


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def session_start(params: Mapping[str, ParamValue]) -> Summary:
    """The HParams dashboard's record of a run's parameters (booleans, numbers and text keep their type)."""
    info = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in params.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, int | float):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = str(value)
    data = plugin_data_pb2.HParamsPluginData(session_start_info=info)
    return _hparams_summary(metadata.SESSION_START_INFO_TAG, data)


def session_end() -> Summary:
    """The HParams dashboard's record that a run finished."""
    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(session_end_info=info)
    return _hparams_summary(metadata.SESSION_END_INFO_TAG, data)


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, out: Path) -> None:
        self.root = Path(out) / "tensorboard"

    def start_run(
        self,
        *,
        name: str,
        group: str | None,
        params: Mapping[str, ParamValue],
        tags: Mapping[str, str],
        run_id: str | None,
        parent_id: str | None = None,
    ) -> TensorBoardRun:
        """The run's id is its folder relative to ``OUT/tensorboard``; a new run gets a folder of its own (``NAME-2``
        when ``NAME`` is taken)."""
        if run_id is not None and run_id == safe_run_name(run_id) and (self.root / run_id).is_dir():
            return TensorBoardRun(self.root, run_id, params=None)
        base = safe_run_name(name)
        self.root.mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            folder = base if n == 1 else f"{base}-{n}"
            try:
                (self.root / folder).mkdir(parents=True)
            except FileExistsError:
                continue
            hparams = {**params, **{f"tag.{k}": v for k, v in tags.items()}}
            return TensorBoardRun(self.root, folder, params={**hparams, "group": group} if group else hparams)

    def close(self) -> None:
        """Each run closes its writer when it ends."""


class TensorBoardRun:
    """``params`` None: a resumed run, whose first epoch written purges the events of that epoch and later."""

    def __init__(self, root: Path, run_id: str, *, params: Mapping[str, ParamValue] | None) -> None:
        self.id = run_id
        self._folder = root / run_id
        self._params = params
        self._writer: SummaryWriter | None = None

    def _open(self, purge_step: int | None = None) -> SummaryWriter:
        if self._writer is None:
            resumed = self._params is None
            self._writer = SummaryWriter(
                log_dir=str(self._folder), purge_step=purge_step if resumed else None, flush_secs=FLUSH_SECONDS
            )
            if not resumed:
                self._writer.file_writer.add_summary(session_start(self._params))
        return self._writer

    def log_epoch(self, *, epoch: int, metrics: Mapping[str, float]) -> None:
        writer = self._open(purge_step=epoch)
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=epoch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        writer = self._open()
        for key, value in metrics.items():
            writer.add_scalar(key, value, global_step=0)

    def log_artifact(self, path: Path) -> None:
        writer = self._open()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            tag = f"artifacts/{file.relative_to(path.parent).as_posix()}"
            suffix = file.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
                writer.add_image(tag, pixels, global_step=0, dataformats="HWC")
            elif suffix in TEXT_SUFFIXES:
                text = file.read_text(errors="replace")
                writer.add_text(tag, text if suffix == ".md" else f"```\n{text}\n```", global_step=0)

    def end(self, status: Status) -> None:
        writer = self._open()
        # TensorBoard keeps the first end a run records, and a failed or killed run may be resumed to its end:
        # only a finished run records one.
        if status == "finished":
            writer.file_writer.add_summary(session_end())
        writer.close()
