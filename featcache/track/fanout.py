"""`Trackers`: one call to every backend; a backend that raises costs one warning and is left out from then on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from featcache.core.runtime import err_console
from featcache.track.base import Status, Tracker, TrackerRun, flatten_params

#: The longest part of a backend's error message that the warning quotes (SQL errors run to pages).
MESSAGE_CHARS = 200


class Trackers:
    """The backends a command tracks to (none: every call does nothing).

    A backend that raises (a locked database, a full disk) is named in one warning on stderr and then skipped
    for every run of this command: tracking never stops the training. Safe to call from several threads.
    """

    def __init__(self, trackers: Sequence[Tracker] = ()) -> None:
        self._trackers = list(trackers)
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        """The backends still tracking."""
        return tuple(t.name for t in self._trackers if t.name not in self._failed)

    def start_run(
        self,
        *,
        name: str,
        group: str | None = None,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
        run_ids: Mapping[str, str] | None = None,
        parent: Run | None = None,
    ) -> Run:
        """A run in every backend; ``run_ids`` (an earlier `Run.ids`) continues those runs instead of new ones.

        ``params`` may nest (`flatten_params`); ``group`` gathers the runs of one sweep; ``parent``: the run this
        one belongs to (MLflow shows it nested under it).
        """
        parent_ids = parent.ids if parent is not None else {}
        flat, tags, run_ids = flatten_params(params or {}), dict(tags or {}), dict(run_ids or {})
        runs: dict[str, TrackerRun] = {}
        for tracker in self._trackers:
            run = self.call(
                tracker.name,
                tracker.start_run,
                name=name,
                group=group,
                params=flat,
                tags=tags,
                run_id=run_ids.get(tracker.name),
                parent_id=parent_ids.get(tracker.name),
            )
            if run is not None:
                runs[tracker.name] = run
        return Run(self, runs)

    def close(self) -> None:
        """Write what the backends still buffer; after the last run ended."""
        for tracker in self._trackers:
            self.call(tracker.name, tracker.close)

    def call(self, backend: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` unless ``backend`` failed before; its exception -> the warning, None."""
        if backend in self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._fail(backend, exc)
            return None

    def _fail(self, backend: str, exc: Exception) -> None:
        with self._lock:
            if backend in self._failed:
                return
            self._failed.add(backend)
        lines = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {lines[0][:MESSAGE_CHARS]}" if lines else type(exc).__name__
        err_console.print(
            f"warning: {backend} tracking failed ({message}); it is off for the rest of this command, "
            "the training goes on",
            style="yellow",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Run:
    """One run across the backends. As a context manager it ends ``finished``, ``failed`` on an exception or
    ``killed`` on Ctrl-C."""

    def __init__(self, trackers: Trackers, runs: Mapping[str, TrackerRun]) -> None:
        self._trackers = trackers
        self._runs = dict(runs)
        self._ended = False

    @property
    def ids(self) -> dict[str, str]:
        """Backend name -> its run id: keep it in the run folder and pass it back to resume the same runs."""
        return {name: run.id for name, run in self._runs.items()}

    def log_epoch(self, *, epoch: int, metrics: Mapping[str, float]) -> None:
        """Values of epoch ``epoch`` (the step; 1 for the first epoch): losses, seconds."""
        values = {key: float(value) for key, value in metrics.items()}
        for name, run in self._runs.items():
            self._trackers.call(name, run.log_epoch, epoch=epoch, metrics=values)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        """Values logged once (test metrics)."""
        values = {key: float(value) for key, value in metrics.items()}
        for name, run in self._runs.items():
            self._trackers.call(name, run.log_metrics, values)

    def log_artifact(self, path: str | Path) -> None:
        """A file, or a folder of files, of the run."""
        for name, run in self._runs.items():
            self._trackers.call(name, run.log_artifact, Path(path))

    def end(self, status: Status = "finished") -> None:
        """End the run in every backend (a second call does nothing)."""
        if self._ended:
            return
        self._ended = True
        for name, run in self._runs.items():
            self._trackers.call(name, run.end, status)

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.end("finished")
        else:
            self.end("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")
