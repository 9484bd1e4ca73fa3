"""featcache.train.sweep: train-decoder over seeds: outputs, resume, torchrun, divergence, the command."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.io import safe_torch_load
from featcache.results.metrics import METRICS
from featcache.store.feature_store import FeatureStore
from featcache.train.protocol import Plan
from featcache.train.rows import select_rows
from featcache.train.run import train_from_store
from featcache.train.sweep import train_decoder
from tests.helpers import (
    CPU,
    RESULT_KEYS,
    SMALL_SWEEP,
    TEST_KEYS,
    copy_zarr_arrays,
    one_line_error,
    quick_sweep,
    quick_train,
    run_then_sigkill,
    run_torchrun,
    table_rows,
)


def test_sweep_writes_results_checkpoints_curves_and_summary(micro_store, tmp_path):
    sweep = train_decoder(quick_sweep(micro_store, tmp_path / "run"), ctx=CPU)
    for seed in (0, 1):
        run = tmp_path / "run" / f"seed-{seed}"
        result = json.loads((run / "results.json").read_text())
        assert RESULT_KEYS <= set(result) and set(result["test"]) == TEST_KEYS
        assert result["mode"] == "C" and result["seed"] == seed and result["epochs"] == 3
        assert result["cuda_graphs"] is False  # the CPU trains eagerly
        assert len(result["history"]["val_loss"]) == 3
        assert result["best_val_loss"] == min(result["history"]["val_loss"])
        assert result["history"]["val_loss"][result["best_epoch"] - 1] == result["best_val_loss"]
        assert (run / "loss_curve.png").stat().st_size > 1000
        ckpt = safe_torch_load(run / "decoder.pt")
        assert ckpt["store"]["encoder"]["arch"] == "vit_micro" and "state_dict" in ckpt  # as on disk
        assert result["encoder"]["description"] == "random ViT-micro" and result["encoder"]["trained"] is False
        assert isinstance(result["degenerate"], list)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(TEST_KEYS) <= set(summary["mean"]) and "std" in summary
    times = sorted(r.train_seconds for r in sweep.results)
    assert (
        summary["train_seconds"]["median"] == pytest.approx(np.median(times))
        and summary["train_seconds"]["max"] == times[1]
    )
    assert (tmp_path / "run" / "summary.csv").read_text().count("\n") == 3
    assert (tmp_path / "run" / "seeds.png").stat().st_size > 5000  # every seed's curves and scores in one figure
    assert sweep.summary["mean"]["iou"] == pytest.approx(np.mean([r.test.iou for r in sweep.results]))


def test_cli_train_decoder(micro_store, tmp_path, cli):
    result = cli(
        "train-decoder",
        micro_store,
        "--size",
        "6",
        "--seeds",
        "0",
        "--epochs",
        "2",
        "--val-size",
        "3",
        "--out",
        tmp_path / "run",
        "--device",
        "cpu",
        "--no-cuda-graphs",  # accepted everywhere; the CPU trains eagerly anyway
    )
    assert result.returncode == 0, result.stderr
    run = json.loads((tmp_path / "run" / "seed-0" / "results.json").read_text())
    # What results.json holds, then the summary over seeds: one seed has no spread ("–", not "± 0.000").
    seed_row, mean_row, std_row, median_row, spread_row = table_rows(result.stdout)
    assert seed_row == [
        "0" + ("*" if run["degenerate"] else ""),
        *(f"{run['test'][k]:.4f}" for k in METRICS),
        str(run["best_epoch"]),
        f"{run['train_seconds']:.1f}",
    ]
    assert mean_row[0] == "mean" and mean_row[1] == f"{run['test']['iou']:.3f}" and set(std_row[1:7]) == {"–"}
    assert median_row[-1] == f"{run['train_seconds']:.1f}" and spread_row[-2:] == ["–", "–"]
    assert "C mode, 6 training images, 1 seeds (exact flips)" in result.stdout
    assert f"runs and summary.json in {tmp_path / 'run'}" in result.stdout
    too_big = cli("train-decoder", micro_store, "--size", "99", "--out", tmp_path / "x")
    assert too_big.returncode == 1 and "larger than the training split" in too_big.stderr


def test_sigkill_during_training_then_rerun_equals_uninterrupted(micro_store, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "ref"
    every_epoch = dataclasses.replace(CPU, checkpoint_seconds=0)
    run_then_sigkill(
        f"""
        import dataclasses
        from featcache.train import train_decoder
        from tests.helpers import CPU, quick_sweep

        cfg = quick_sweep({str(micro_store)!r}, {str(out)!r}, epochs=6, batch_size=3, grouped=True)
        train_decoder(cfg, ctx=dataclasses.replace(CPU, checkpoint_seconds=0))
    """,
        after_saves=3,
    )
    assert (out / "resume-0-1.pt").exists() and not (out / "seed-0" / "results.json").exists()
    options = dict(epochs=6, batch_size=3)
    resumed = train_decoder(quick_sweep(micro_store, out, grouped=True, **options), ctx=every_epoch)
    plain = train_decoder(quick_sweep(micro_store, reference, grouped=False, **options), ctx=CPU)
    # grouped and resumed against sequential and uninterrupted
    for a, b in zip(resumed.results, plain.results, strict=True):
        assert a.best_epoch == b.best_epoch
        np.testing.assert_allclose(a.history.val_loss, b.history.val_loss, rtol=1e-4)
    assert not (out / "resume-0-1.pt").exists()
    grouped_ref = tmp_path / "grouped-ref"
    train_decoder(quick_sweep(micro_store, grouped_ref, grouped=True, **options), ctx=CPU)
    a, b = safe_torch_load(out / "seed-0" / "decoder.pt"), safe_torch_load(grouped_ref / "seed-0" / "decoder.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # bit-identical
    again = train_decoder(quick_sweep(micro_store, out, **options), ctx=CPU)  # finished seeds are kept
    assert [r.train_seconds for r in again.results] == [r.train_seconds for r in resumed.results]
    with pytest.raises(FeatcacheError, match="another configuration"):
        train_decoder(quick_sweep(micro_store, out, seeds=(0,), epochs=7, batch_size=3), ctx=CPU)


def test_same_command_twice_gives_identical_metrics(micro_store, tmp_path, cli):
    args = [
        "train-decoder",
        micro_store,
        "--size",
        "6",
        "--seeds",
        "0",
        "--epochs",
        "3",
        "--val-size",
        "3",
        "--device",
        "cpu",
    ]
    for name in ("a", "b"):
        assert cli(*args, "--out", tmp_path / name).returncode == 0
    a, b = (json.loads((tmp_path / n / "seed-0" / "results.json").read_text()) for n in "ab")
    assert a["test"] == b["test"] and a["history"] == b["history"]


def test_torchrun_spreads_seeds_over_ranks(micro_store, tmp_path):
    single = train_decoder(quick_sweep(micro_store, tmp_path / "one", size=6, batch_size=3, val_size=3), ctx=CPU)
    result = run_torchrun("train-decoder", micro_store, *SMALL_SWEEP, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for seed, ref in zip((0, 1), single.results, strict=True):
        ran = json.loads((tmp_path / "two" / f"seed-{seed}" / "results.json").read_text())
        np.testing.assert_allclose(ran["history"]["val_loss"], ref.history.val_loss, rtol=1e-5)


def test_torchrun_rank_that_fails_stops_the_others(micro_store, tmp_path):
    """Rank 1 refuses its seed's resume state while rank 0 trains: the run ends, with the reason, instead of
    rank 0 waiting at the final gather for the collective timeout."""
    from featcache.core.io import torch_save

    torch_save({"identity": {"another": "run"}, "state": {}}, tmp_path / "run" / "resume-1.pt")
    result = run_torchrun("train-decoder", micro_store, *SMALL_SWEEP, "--out", tmp_path / "run", timeout=180)
    assert result.returncode != 0
    assert "resume-1.pt holds an interrupted run of another configuration" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_diverging_run_stops_with_one_line_and_no_resume_state(micro_store, tmp_path, cli):
    diverged = r"diverged: the loss of seed 0 at size 8 is not finite at epoch 1; lower --lr \(now 1e\+30\)"
    with FeatureStore.open(micro_store) as store, pytest.raises(FeatcacheError, match=diverged):
        train_from_store(store, quick_train(lr=1e30), torch.device("cpu"))
    # lr 1000 survives epoch 1 (whose resume state is written), then diverges: that state would diverge again.
    out = tmp_path / "sweep"
    with pytest.raises(FeatcacheError, match=r"seed 0 .* at epoch \d+; lower --lr \(now 1000\)"):
        cfg = quick_sweep(micro_store, out, seeds=(0,), lrs=(1000.0,))
        train_decoder(cfg, ctx=dataclasses.replace(CPU, checkpoint_seconds=0))
    assert not list(out.glob("resume-*.pt")) and not (out / "seed-0").exists()
    result = cli(
        "--device",
        "cpu",
        "train-decoder",
        micro_store,
        "--size",
        "4",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--val-size",
        "2",
        "--lr",
        "1e30",
        "--out",
        tmp_path / "cli",
    )
    one_line_error(result, "seed 0", "epoch 1", "lower --lr")


@pytest.mark.parametrize("grouped", [False, True], ids=["sequential", "grouped"])
def test_a_seed_that_diverges_keeps_the_seeds_finished_before_it(micro_store, tmp_path, grouped):
    """Seed 1 alone meets a non-finite feature (a stand-in for a run that diverges): seed 0, trained first, is
    kept; a group stops whole and names the seed that diverged."""
    with FeatureStore.open(micro_store) as store:
        plan = Plan(size=8, epochs=1, batch_size=4, val_size=4)
        row = min(set(select_rows(store, plan, 1).train_rows) - set(select_rows(store, plan, 0).train_rows))
    path = tmp_path / "poisoned.zarr"
    features = copy_zarr_arrays(micro_store, path)["features"]
    features[row] = np.full(features.shape[1:], np.nan, np.float32)
    out = tmp_path / "sweep"
    stopped = r" \(stopping seeds 0, 1, trained together\)" if grouped else ""
    refusal = rf"the loss of seed 1 at size 8 is not finite at epoch 1{stopped}; lower --lr"
    with pytest.raises(FeatcacheError, match=refusal):
        train_decoder(quick_sweep(path, out, grouped=grouped), ctx=CPU)
    assert (out / "seed-0" / "results.json").exists() != grouped
    assert not (out / "seed-1").exists()
