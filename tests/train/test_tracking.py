"""featcache.train.tracking: train-decoder, compare-e2e and pretrain reported to the real MLflow (read back through
`mlflow.MlflowClient` from the SQLite store) and TensorBoard (read back through its own `EventAccumulator`), equal
to the runs' results.json; resume, torchrun ranks and failing trackers."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from featcache import __version__
from featcache.results.records import RunResults
from featcache.store.feature_store import FeatureStore
from featcache.train.compare import compare_e2e
from featcache.train.pretrain import pretrain
from featcache.train.sweep import train_decoder
from featcache.train.tracking import IDS_FILE, read_ids
from tests.helpers import CPU, SMALL_SWEEP, quick_compare, quick_pretrain, quick_sweep, run_then_sigkill, run_torchrun

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TRACKED = dataclasses.replace(CPU, track=("mlflow", "tensorboard"))
TEST_METRICS = ("iou", "dice", "sensitivity", "specificity", "accuracy", "thresholded_jaccard")


@pytest.fixture(autouse=True)
def local_mlflow(monkeypatch):
    """MLflow in each output folder, whatever the environment says."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


def client(out):
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def history(mlflow_client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(mlflow_client.get_metric_history(run_id, key), key=lambda m: m.step)]


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def sweep(micro_store, tmp_path_factory):
    """Two seeds trained as one grouped network (each run's own losses must reach its own tracked run), tracked to
    MLflow and TensorBoard."""
    out = tmp_path_factory.mktemp("tracked") / "sweep"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        train_decoder(quick_sweep(micro_store, out, grouped=True), ctx=TRACKED)
    return out


def test_mlflow_runs_read_back_equal_to_results_json(sweep, micro_store):
    found = client(sweep)
    (experiment,) = [e for e in found.search_experiments() if e.name != "Default"]
    assert experiment.name == f"train-decoder {sweep.resolve()}"
    runs = {r.info.run_name: r for r in found.search_runs([experiment.experiment_id])}
    assert set(runs) == {"train-decoder", "seed-0", "seed-1"}
    parent = runs["train-decoder"].info.run_id
    assert read_ids(sweep / IDS_FILE)["mlflow"] == parent
    with FeatureStore.open(micro_store) as store:
        record = store.record
    for seed in (0, 1):
        results = RunResults.read(sweep / f"seed-{seed}" / "results.json")
        run = runs[f"seed-{seed}"]
        run_id = run.info.run_id
        assert read_ids(sweep / f"seed-{seed}" / IDS_FILE)["mlflow"] == run_id
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        params = run.data.params
        expected = {
            "mode": "C",
            "size": str(results.size),
            "seed": str(seed),
            "lr": str(results.lr),
            "weight_decay": str(results.weight_decay),
            "epochs": str(results.epochs),
            "batch_size": str(results.batch_size),
            "val_size": str(results.val_size),
            "layers": ",".join(map(str, record.layers)),
            "encoder.arch": record.encoder.arch,
            "encoder.weights_sha256": record.encoder.weights_sha256,
            "store_fingerprint": record.fingerprint(),
            "featcache_version": __version__,
        }
        assert {key: params[key] for key in expected} == expected
        epochs = range(1, results.epochs + 1)
        assert history(found, run_id, "train_loss") == list(zip(epochs, results.history.train_loss, strict=True))
        assert history(found, run_id, "val_loss") == list(zip(epochs, results.history.val_loss, strict=True))
        seconds = [value for _, value in history(found, run_id, "epoch_seconds")]
        assert len(seconds) == results.epochs and sum(seconds) == pytest.approx(results.train_seconds, abs=1e-3)
        metrics = run.data.metrics
        assert {name: metrics[f"test/{name}"] for name in TEST_METRICS} == results.test.as_dict()
        assert (metrics["best_epoch"], metrics["best_val_loss"]) == (results.best_epoch, results.best_val_loss)
        assert sorted(a.path for a in found.list_artifacts(run_id)) == ["loss_curve.png", "results.json"]
        stored = found.download_artifacts(run_id, "results.json", str(sweep.parent / f"download-{seed}"))
        assert json.loads(open(stored).read()) == results.to_json()
    artifacts = sorted(a.path for a in found.list_artifacts(parent))
    assert artifacts == ["seeds.png", "summary.csv", "summary.json"]


def test_tensorboard_event_files_read_back_equal_to_results_json(sweep):
    assert sorted(p.name for p in (sweep / "tensorboard").iterdir()) == ["seed-0", "seed-1", "train-decoder"]
    for seed in (0, 1):
        results = RunResults.read(sweep / f"seed-{seed}" / "results.json")
        found = events(sweep / "tensorboard" / f"seed-{seed}")
        for key in ("train_loss", "val_loss"):
            logged = [(e.step, e.value) for e in found.Scalars(key)]
            values = getattr(results.history, key)
            assert [step for step, _ in logged] == list(range(1, len(values) + 1))
            assert [value for _, value in logged] == pytest.approx(values, rel=1e-6)  # float32 in event files
        for name in TEST_METRICS:
            assert found.Scalars(f"test/{name}")[0].value == pytest.approx(getattr(results.test, name), rel=1e-6)
        text = found.Tensors("artifacts/results.json/text_summary")
        assert json.loads(text[0].tensor_proto.string_val[0].decode().strip("`\n")) == results.to_json()


def test_without_track_nothing_is_written_for_trackers(micro_store, tmp_path):
    out = tmp_path / "plain"
    train_decoder(quick_sweep(micro_store, out, seeds=(0,), epochs=1), ctx=CPU)
    left = {p.name for p in out.rglob("*")}
    assert not left & {IDS_FILE, "mlflow.db", "tensorboard", "mlartifacts", "config.toml"}


def test_a_killed_sweep_resumed_continues_the_same_tracked_runs(micro_store, tmp_path):
    out = tmp_path / "killed"
    run_then_sigkill(
        f"""
        import dataclasses
        from featcache.train import train_decoder
        from tests.helpers import CPU, quick_sweep

        ctx = dataclasses.replace(CPU, checkpoint_seconds=0, track=("mlflow",))
        train_decoder(quick_sweep({str(micro_store)!r}, {str(out)!r}, epochs=4, grouped=True), ctx=ctx)
    """,
        after_saves=2,
    )
    ids = {seed: read_ids(out / f"seed-{seed}" / IDS_FILE) for seed in (0, 1)}
    assert ids[0] and ids[1] and not (out / "seed-0" / "results.json").exists()
    ctx = dataclasses.replace(CPU, checkpoint_seconds=0, track=("mlflow",))
    train_decoder(quick_sweep(micro_store, out, epochs=4, grouped=True), ctx=ctx)
    found = client(out)
    assert len([r for e in found.search_experiments() for r in found.search_runs([e.experiment_id])]) == 3
    for seed in (0, 1):
        assert read_ids(out / f"seed-{seed}" / IDS_FILE) == ids[seed]
        results = RunResults.read(out / f"seed-{seed}" / "results.json")
        run_id = ids[seed]["mlflow"]
        assert found.get_run(run_id).info.status == "FINISHED"
        # Epochs 1-2 the killed process trained (its MLflow batch lost with it), 3-4 the resumed one: each once.
        assert history(found, run_id, "val_loss") == list(enumerate(results.history.val_loss, start=1))
        assert len(history(found, run_id, "epoch_seconds")) == 4


def test_a_tracker_failing_mid_run_costs_one_warning_and_never_the_training(micro_store, tmp_path, capsys, monkeypatch):
    batches = []

    log_batch = mlflow.MlflowClient.log_batch

    def locked(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        if not metrics:  # the runs' creation and parameters go through
            return log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)
        batches.append(run_id)
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", locked)
    cfg = quick_sweep(micro_store, tmp_path / "locked")
    sweep = train_decoder(cfg, ctx=dataclasses.replace(CPU, track=("mlflow",)))
    plain = train_decoder(dataclasses.replace(cfg, out=tmp_path / "plain"), ctx=CPU)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        "warning: mlflow tracking failed (OperationalError: database is locked); it is off for the rest of this "
        "command, the training goes on"
    ]
    assert len(batches) == 1
    assert [r.history.to_json() for r in sweep.results] == [r.history.to_json() for r in plain.results]
    assert [r.test for r in sweep.results] == [r.test for r in plain.results]


def test_compare_e2e_runs_are_nested_under_the_comparison_with_the_report(micro_store, tmp_path):
    out = tmp_path / "compare"
    comparison = compare_e2e(quick_compare(micro_store, out, seeds=(0,)), ctx=TRACKED)
    found = client(out)
    (experiment,) = [e for e in found.search_experiments() if e.name != "Default"]
    runs = {r.info.run_name: r for r in found.search_runs([experiment.experiment_id])}
    names = {f"{r.mode}/size-{r.size}/seed-{r.seed}" for r in comparison.results}
    assert set(runs) == {"compare-e2e", *names} and len(names) == 4
    parent = runs.pop("compare-e2e")
    assert {"report.md", "results.csv", "metrics_vs_size.png"} <= {
        a.path for a in found.list_artifacts(parent.info.run_id)
    }
    for result in comparison.results:
        run = runs[f"{result.mode}/size-{result.size}/seed-{result.seed}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.params["mode"] == result.mode
        assert run.data.metrics["test/iou"] == result.test.iou
        assert history(found, run.info.run_id, "val_loss") == list(enumerate(result.history.val_loss, start=1))
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["C", "F", "compare-e2e"]
    compare_e2e(quick_compare(micro_store, out, seeds=(0,)), ctx=TRACKED)  # resumed: every run kept
    again = {r.info.run_name for r in found.search_runs([experiment.experiment_id])}
    assert len(found.search_runs([experiment.experiment_id])) == len(again) == 5  # nothing logged twice


def test_pretraining_is_one_tracked_run_beside_its_checkpoint(synth_root, tmp_path):
    out = tmp_path / "enc" / "encoder.pt"
    pretrain(quick_pretrain(synth_root, out, epochs=2), ctx=dataclasses.replace(CPU, track=("tensorboard",)))
    saved = json.loads((tmp_path / "enc" / "encoder_history.json").read_text())
    assert read_ids(tmp_path / "enc" / "encoder_tracking.json") == {"tensorboard": "encoder"}
    found = events(tmp_path / "enc" / "tensorboard" / "encoder")
    for key in ("train_loss", "val_loss"):
        logged = [(e.step, e.value) for e in found.Scalars(key)]
        assert logged == [(i, pytest.approx(v, rel=1e-6)) for i, v in enumerate(saved["history"][key], start=1)]
    assert found.Scalars("best_epoch")[0].value == saved["best_epoch"]
    assert {"artifacts/encoder_loss.png", "artifacts/encoder_reconstructions.png"} <= set(found.Tags()["images"])


def test_under_torchrun_rank_0_alone_tracks_and_logs_the_other_ranks_runs(micro_store, tmp_path):
    out = tmp_path / "ranks"
    result = run_torchrun("train-decoder", micro_store, *SMALL_SWEEP, "--out", out, "--track", "tensorboard")
    assert result.returncode == 0, result.stderr[-3000:]
    files = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert sorted(f.parent.name for f in files) == ["seed-0", "seed-1", "train-decoder"]
    assert len({f.name.rsplit(".", 2)[-2] for f in files}) == 1  # one process (the pid in the name) wrote them all
    trained_on_rank_1 = events(out / "tensorboard" / "seed-1")
    results = RunResults.read(out / "seed-1" / "results.json")
    logged = [e.value for e in trained_on_rank_1.Scalars("val_loss")]
    assert logged == pytest.approx(results.history.val_loss, rel=1e-6)
    assert "epoch_seconds" not in trained_on_rank_1.Tags()["scalars"]  # logged from results.json afterwards
