"""MLflow: runs in ``MLFLOW_TRACKING_URI``, else in a SQLite database in the output folder (``OUT/mlflow.db``,
artifacts in ``OUT/mlartifacts``: ``mlflow ui --backend-store-uri sqlite:///OUT/mlflow.db`` shows them).

A sweep's group is an MLflow experiment (``MLFLOW_EXPERIMENT_NAME``, when set, gathers every group in one), its
runs nested under the sweep's own run. Epoch values are written in batches, at most every `FLUSH_SECONDS` and
at most `FLUSH_SHARE` of the wall time (one write to SQLite costs milliseconds, an epoch of a small decoder not
much more), and whenever the run logs anything else or ends.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from featcache.track.base import ParamValue, Status

FLUSH_SECONDS = 10.0
FLUSH_SHARE = 0.01
#: MLflow's limits on one `log_batch` call and on a parameter's and a tag's value (characters).
METRICS_PER_BATCH, PARAMS_PER_BATCH, PARAM_CHARS, TAG_CHARS = 1000, 100, 6000, 8000
DEFAULT_EXPERIMENT = "featcache"
#: The tag by which MLflow nests a run under its parent run.
PARENT_TAG = "mlflow.parentRunId"


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Hold back ``logger``'s INFO lines (MLflow announces the creation of its tables on stderr)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker:
    """Opens the tracking store at the first run; ``lock`` orders every database write (SQLite has one writer)."""

    name = "mlflow"

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or None  # None: OUT/mlflow.db
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}
        self._pending: dict[str, list[Metric]] = {}
        self.lock = threading.RLock()
        self._next_flush = time.monotonic() + FLUSH_SECONDS

    @property
    def client(self) -> MlflowClient:
        with self.lock:
            if self._client is None:
                uri = self.uri
                if uri is None:
                    self.out.mkdir(parents=True, exist_ok=True)
                    uri = f"sqlite:///{(self.out / 'mlflow.db').resolve()}"
                with _quiet("mlflow.store.db.utils"):
                    client = MlflowClient(tracking_uri=uri)
                    client.search_experiments(max_results=1)  # creates the database's tables now, quietly
                self._client = client
            return self._client

    def start_run(
        self,
        *,
        name: str,
        group: str | None,
        params: Mapping[str, ParamValue],
        tags: Mapping[str, str],
        run_id: str | None,
        parent_id: str | None = None,
    ) -> MlflowRun:
        with self.lock:
            run = self._existing(run_id) if run_id is not None else None
            if run is None:
                experiment = self._experiment_id(
                    os.environ.get("MLFLOW_EXPERIMENT_NAME") or group or DEFAULT_EXPERIMENT
                )
                tags = {**tags, "featcache.group": group} if group else dict(tags)
                if parent_id is not None:
                    tags[PARENT_TAG] = parent_id
                run = self.client.create_run(
                    experiment, run_name=name, tags={k: str(v)[:TAG_CHARS] for k, v in tags.items()}
                )
                logged_through = None
            else:
                self.client.update_run(run.info.run_id, status="RUNNING")
                params = {k: v for k, v in params.items() if k not in run.data.params}
                logged_through = self._last_step(run)
            items = [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items()]
            for i in range(0, len(items), PARAMS_PER_BATCH):
                self.client.log_batch(run.info.run_id, params=items[i : i + PARAMS_PER_BATCH])
            return MlflowRun(self, run.info.run_id, logged_through)

    def _existing(self, run_id: str) -> Run | None:
        try:
            return self.client.get_run(run_id)
        except MlflowException:  # not in this store (deleted, or another database): a new run instead
            return None

    def _last_step(self, run: Run) -> int | None:
        """The last step the run's metrics reached: a resumed run does not log those epochs twice."""
        steps = [m.step for key in run.data.metrics for m in self.client.get_metric_history(run.info.run_id, key)]
        return max(steps, default=None)

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                location = None if self.uri else (self.out / "mlartifacts").resolve().as_uri()
                try:
                    self._experiments[name] = self.client.create_experiment(name, artifact_location=location)
                except MlflowException:  # another process created it meanwhile
                    self._experiments[name] = self.client.get_experiment_by_name(name).experiment_id
            else:
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment.experiment_id)
                self._experiments[name] = experiment.experiment_id
        return self._experiments[name]

    def queue(self, run_id: str, metrics: list[Metric]) -> None:
        """Hold ``metrics`` for the next batch; write every run's batch when one is due."""
        with self.lock:
            self._pending.setdefault(run_id, []).extend(metrics)
            if time.monotonic() >= self._next_flush:
                self.flush()

    def flush(self, run_id: str | None = None) -> None:
        """Write the held epoch values of ``run_id`` (None: of every run)."""
        with self.lock:
            start = time.monotonic()
            for rid in list(self._pending) if run_id is None else [run_id]:
                metrics = self._pending.pop(rid, [])
                for i in range(0, len(metrics), METRICS_PER_BATCH):
                    self.client.log_batch(rid, metrics=metrics[i : i + METRICS_PER_BATCH])
            if run_id is None:
                took = time.monotonic() - start
                self._next_flush = time.monotonic() + max(FLUSH_SECONDS, took / FLUSH_SHARE)

    def close(self) -> None:
        if self._client is not None:
            self.flush()


class MlflowRun:
    def __init__(self, tracker: MlflowTracker, run_id: str, logged_through: int | None) -> None:
        self.id = run_id
        self._tracker = tracker
        self._logged_through = logged_through

    def log_epoch(self, *, epoch: int, metrics: Mapping[str, float]) -> None:
        if self._logged_through is not None and epoch <= self._logged_through:
            return
        stamp = _now_ms()
        self._tracker.queue(self.id, [Metric(key, value, stamp, epoch) for key, value in metrics.items()])

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        stamp = _now_ms()
        with self._tracker.lock:
            self._tracker.flush(self.id)
            self._tracker.client.log_batch(self.id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])

    def log_artifact(self, path: Path) -> None:
        # Copies files into the artifact store; no database write, so no lock.
        if path.is_dir():
            self._tracker.client.log_artifacts(self.id, str(path), artifact_path=path.name)
        else:
            self._tracker.client.log_artifact(self.id, str(path))

    def end(self, status: Status) -> None:
        with self._tracker.lock:
            self._tracker.flush(self.id)
            self._tracker.client.set_terminated(self.id, status=status.upper())
