"""The interface every tracking backend implements: a tracker opens runs; a run takes epochs, metrics and files."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

#: How a run ended: trained to the end, stopped by an error, or interrupted (Ctrl-C, a signal).
Status = Literal["finished", "failed", "killed"]

#: A parameter value as the backends store it (nested mappings are flattened to dotted keys first).
ParamValue = str | int | float | bool


class TrackerRun(Protocol):
    """One tracked run of one backend. ``id`` continues it when passed back to `Tracker.start_run`."""

    id: str

    def log_epoch(self, *, epoch: int, metrics: Mapping[str, float]) -> None:
        """Per-epoch values (e.g. ``train_loss``, ``val_loss``, ``epoch_seconds``) at step ``epoch``."""

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Values logged once per run (e.g. test metrics)."""

    def log_artifact(self, path: Path) -> None:
        """A file or a folder of files that belongs to the run (results.json, figures, report.md)."""

    def end(self, status: Status) -> None:
        """Mark the run ended; the backend writes what it still holds."""


class Tracker(Protocol):
    """One backend (MLflow, TensorBoard, W&B), opened once per command; it may hold several runs at once."""

    name: str

    def start_run(
        self,
        *,
        name: str,
        group: str | None,
        params: Mapping[str, ParamValue],
        tags: Mapping[str, str],
        run_id: str | None,
        parent_id: str | None = None,
    ) -> TrackerRun:
        """A new run, or the run ``run_id`` (a `TrackerRun.id` of an earlier process) continued.

        ``name`` tells the run apart within ``group`` (a sweep: an MLflow experiment, a W&B group); ``params`` are
        flat (`flatten_params`); ``parent_id``: this backend's id of the run it belongs to (a sweep's own run).
        """

    def close(self) -> None:
        """Write what is still buffered; called once, after the last run ended."""


def flatten_params(params: Mapping[str, object], prefix: str = "") -> dict[str, ParamValue]:
    """Nested mappings -> dotted keys (``{"encoder": {"arch": ...}}`` -> ``encoder.arch``); lists and tuples ->
    comma-separated text; paths and other objects -> text; None values left out."""
    flat: dict[str, ParamValue] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ",".join(map(str, value))
        elif isinstance(value, str | int | float | bool):
            flat[name] = value
        elif value is not None:
            flat[name] = str(value)
    return flat


def safe_run_name(name: str) -> str:
    """``name`` as a relative folder path: characters other than letters, digits, ``.=_-`` and ``/`` -> ``_``,
    no empty, ``.`` or ``..`` parts."""
    parts = [re.sub(r"[^\w.=-]+", "_", part) for part in name.split("/")]
    parts = [part for part in parts if part.strip(".")]
    return "/".join(parts) or "run"
