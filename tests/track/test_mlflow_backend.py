"""MLflow: runs logged into the local SQLite store and read back through `mlflow.MlflowClient`."""

from __future__ import annotations

import sqlite3

import pytest

from featcache.track import open_trackers

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def out(tmp_path_factory, monkeypatch_module):
    """One output folder (one SQLite database, created once: seconds) for the module's tests."""
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch_module.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    return tmp_path_factory.mktemp("mlflow") / "out"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def trackers(out):
    trackers = open_trackers(["mlflow"], out=out)
    yield trackers
    trackers.close()


@pytest.fixture(scope="module")
def client(out, trackers):
    trackers.start_run(name="first").end()  # creates the database
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_run_reads_back_equal_to_its_results_json(trackers, client, out, fake_run):
    run = trackers.start_run(name="C/n10/seed-0", group="sweep-a", params=fake_run.params, tags={"command": "test"})
    fake_run.log(run)
    results, run_id = fake_run.results, run.ids["mlflow"]
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED" and stored.info.run_name == "C/n10/seed-0"
    assert client.get_experiment(stored.info.experiment_id).name == "sweep-a"
    assert stored.data.tags["command"] == "test" and stored.data.tags["featcache.group"] == "sweep-a"
    assert stored.data.params == {key: str(value) for key, value in results["params"].items()}
    for key in ("train_loss", "val_loss", "epoch_seconds"):
        assert history(client, run_id, key) == [(row["epoch"], row[key]) for row in results["history"]]
    assert {key: stored.data.metrics[key] for key in results["test"]} == results["test"]
    assert [f.path for f in client.list_artifacts(run_id)] == ["figures", "results.json"]
    assert [f.path for f in client.list_artifacts(run_id, "figures")] == ["figures/curves.png"]
    assert (out / "mlartifacts" / run_id / "artifacts" / "results.json").read_text() == (
        fake_run.folder / "results.json"
    ).read_text()


def test_runs_of_one_group_share_an_experiment(trackers, client):
    ids = [trackers.start_run(name=f"seed-{seed}", group="sweep-b").ids["mlflow"] for seed in range(2)]
    experiments = {client.get_run(run_id).info.experiment_id for run_id in ids}
    assert len(experiments) == 1 and client.get_experiment(experiments.pop()).name == "sweep-b"


def test_a_resumed_run_continues_the_same_run_without_logging_an_epoch_twice(out, client, fake_run):
    first = open_trackers(["mlflow"], out=out)  # the process that is killed after epoch 2
    run = first.start_run(name="seed-0", group="resume", params=fake_run.params)
    for epoch in (1, 2):
        run.log_epoch(epoch=epoch, metrics=fake_run.history[epoch])
    first.close()
    assert client.get_run(run.ids["mlflow"]).info.status == "RUNNING"

    second = open_trackers(["mlflow"], out=out)  # resumes from its checkpoint of epoch 1
    resumed = second.start_run(name="seed-0", group="resume", params=fake_run.params, run_ids=run.ids)
    for epoch in (2, 3):
        resumed.log_epoch(epoch=epoch, metrics=fake_run.history[epoch])
    resumed.end()
    second.close()
    assert resumed.ids == run.ids
    assert history(client, run.ids["mlflow"], "train_loss") == [
        (epoch, fake_run.history[epoch]["train_loss"]) for epoch in (1, 2, 3)
    ]
    assert client.get_run(run.ids["mlflow"]).info.status == "FINISHED"


def test_a_run_id_the_store_does_not_know_starts_a_new_run(trackers):
    run = trackers.start_run(name="seed-0", run_ids={"mlflow": "0123456789abcdef0123456789abcdef"})
    assert run.ids["mlflow"] != "0123456789abcdef0123456789abcdef"


def test_a_locked_database_costs_one_warning_and_training_goes_on(out, fake_run, capsys, monkeypatch):
    trackers = open_trackers(["mlflow"], out=out)
    run = trackers.start_run(name="seed-0", group="locked", params=fake_run.params)

    def locked(*args, **kwargs):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", locked)
    fake_run.log(run)
    second = trackers.start_run(name="seed-1", group="locked")
    fake_run.log(second)
    trackers.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and trackers.names == () and second.ids == {}
    assert "warning: mlflow tracking failed (OperationalError: database is locked)" in err


def test_mlflow_tracking_uri_wins_over_the_output_folder(out, client, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    trackers = open_trackers(["mlflow"], out=tmp_path / "elsewhere")
    trackers.start_run(name="seed-0", group="from-the-environment").end()
    trackers.close()
    assert client.get_experiment_by_name("from-the-environment") is not None
    assert not (tmp_path / "elsewhere").exists()


def test_a_child_run_is_nested_under_its_parent(trackers, client):
    parent = trackers.start_run(name="sweep", group="nested")
    child = trackers.start_run(name="seed-0", group="nested", parent=parent)
    stored = client.get_run(child.ids["mlflow"])
    assert stored.data.tags["mlflow.parentRunId"] == parent.ids["mlflow"]
    assert "mlflow.parentRunId" not in client.get_run(parent.ids["mlflow"]).data.tags


def test_mlflow_experiment_name_gathers_every_group_in_one_experiment(trackers, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "all-sweeps")
    run = trackers.start_run(name="seed-0", group="one-sweep")
    stored = client.get_run(run.ids["mlflow"])
    assert client.get_experiment(stored.info.experiment_id).name == "all-sweeps"
    assert stored.data.tags["featcache.group"] == "one-sweep"
