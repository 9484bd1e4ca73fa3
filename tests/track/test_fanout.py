"""`Trackers`: every call to every tracker, a failing one warned of once and dropped: no tracker package needed."""

from __future__ import annotations

import pytest

from featcache.track import Trackers, flatten_params


class Recorder:
    """A backend that records its calls and raises ``OSError`` at the ``fail_at``-th epoch logged."""

    def __init__(self, name: str, fail_at: int | None = None) -> None:
        self.name = name
        self.fail_at = fail_at
        self.calls: list[tuple] = []
        self.parents: list[tuple] = []

    def start_run(self, *, name, group, params, tags, run_id, parent_id=None):
        self.calls.append(("start", name, group, dict(params), dict(tags), run_id))
        self.parents.append((name, parent_id))
        return RecorderRun(self, run_id or f"{self.name}-{name}")

    def close(self) -> None:
        self.calls.append(("close",))


class RecorderRun:
    def __init__(self, backend: Recorder, run_id: str) -> None:
        self.backend, self.id = backend, run_id

    def log_epoch(self, *, epoch, metrics):
        if epoch == self.backend.fail_at:
            raise OSError("[Errno 28] No space left on device\nsecond line of the message")
        self.backend.calls.append(("epoch", epoch, dict(metrics)))

    def log_metrics(self, metrics):
        self.backend.calls.append(("metrics", dict(metrics)))

    def log_artifact(self, path):
        self.backend.calls.append(("artifact", path.name))

    def end(self, status):
        self.backend.calls.append(("end", status))


def test_every_backend_gets_every_call_with_flat_params_and_its_own_resume_id(fake_run):
    a, b = Recorder("a"), Recorder("b")
    trackers = Trackers([a, b])
    run = trackers.start_run(
        name="seed-0", group="sweep", params=fake_run.params, tags={"command": "x"}, run_ids={"b": "old"}
    )
    fake_run.log(run)
    trackers.close()
    assert run.ids == {"a": "a-seed-0", "b": "old"}
    assert a.calls[0] == ("start", "seed-0", "sweep", flatten_params(fake_run.params), {"command": "x"}, None)
    assert b.calls[0][-1] == "old"
    assert (
        a.calls[1:]
        == b.calls[1:]
        == [
            *(("epoch", epoch, values) for epoch, values in fake_run.history.items()),
            ("metrics", fake_run.test),
            ("artifact", "results.json"),
            ("artifact", "figures"),
            ("end", "finished"),
            ("close",),
        ]
    )


def test_a_failing_backend_warns_once_and_the_others_and_the_caller_go_on(fake_run, capsys):
    broken, healthy = Recorder("broken", fail_at=2), Recorder("healthy")
    trackers = Trackers([broken, healthy])
    fake_run.log(trackers.start_run(name="seed-0"))
    fake_run.log(trackers.start_run(name="seed-1"))
    trackers.close()
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.count("warning:") == 1
    assert "broken tracking failed (OSError: [Errno 28] No space left on device)" in warning
    assert "second line" not in warning and "training goes on" in warning
    assert broken.calls == [("start", "seed-0", None, {}, {}, None), ("epoch", 1, fake_run.history[1])]
    assert sum(call[0] == "end" for call in healthy.calls) == 2 and trackers.names == ("healthy",)


@pytest.mark.parametrize(("error", "status"), [(ValueError, "failed"), (KeyboardInterrupt, "killed")])
def test_a_run_used_as_a_context_ends_failed_or_killed_on_an_exception(error, status):
    backend = Recorder("a")
    with pytest.raises(error):
        with Trackers([backend]).start_run(name="seed-0") as run:
            run.log_epoch(epoch=1, metrics={"train_loss": 1.0})
            raise error
    run.end()
    assert backend.calls[-1] == ("end", status) and [c[0] for c in backend.calls].count("end") == 1


def test_a_run_started_under_a_parent_gets_each_backends_own_parent_id():
    a, b = Recorder("a"), Recorder("b")
    trackers = Trackers([a, b])
    sweep = trackers.start_run(name="sweep")
    trackers.start_run(name="seed-0", parent=sweep)
    assert [call[-1] for call in a.parents] == [None, "a-sweep"] and [call[-1] for call in b.parents] == [
        None,
        "b-sweep",
    ]
