import dataclasses
import json
import threading

import numpy as np
import pytest
import torch

from conftest import (
    SMALL_SWEEP,
    copy_zarr_arrays,
    extract_config,
    one_line_error,
    quick_train,
    rewrite_masks_as_0_1,
    run_then_sigkill,
    run_torchrun,
    table_rows,
)
from featcache.errors import FeatcacheError
from featcache.experiment import parse_seeds, train_decoder
from featcache.extract import extract
from featcache.io import safe_torch_load
from featcache.loop import RunInputs, fit
from featcache.metrics import METRICS
from featcache.models import build_encoder
from featcache.protocol import Plan, plan_run
from featcache.sources import EncoderFeatures, StoreFeatures, flip_per_sample
from featcache.store import FeatureStore
from featcache.train import (
    TrainConfig,
    grouped_decoder,
    seeded_decoder,
    select_rows,
    train_from_store,
    train_group_from_store,
)

RESULT_KEYS = {
    "cuda_graphs",
    "mode",
    "size",
    "seed",
    "val_size",
    "epochs",
    "batch_size",
    "best_epoch",
    "train_seconds",
    "total_seconds",
    "augment",
    "device",
    "test",
    "history",
}
TEST_KEYS = {"iou", "dice", "sensitivity", "specificity", "accuracy", "thresholded_jaccard"}


def test_sweep_writes_results_checkpoints_curves_and_summary(micro_store, tmp_path):
    sweep = train_decoder(str(micro_store), quick_train(), [0, 1], tmp_path / "run", device="cpu", progress=False)
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
        assert ckpt["store"]["encoder"]["arch"] == "vit_micro" and "state_dict" in ckpt
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and set(TEST_KEYS) <= set(summary["mean"]) and "std" in summary
    assert (tmp_path / "run" / "summary.csv").read_text().count("\n") == 3
    assert sweep.summary["mean"]["iou"] == pytest.approx(np.mean([r["test"]["iou"] for r in sweep.results]))


def test_same_seed_same_metrics_and_subsets(micro_store):
    with FeatureStore.open(micro_store) as store:
        a, b, c = (train_from_store(store, quick_train(seed=s), torch.device("cpu")).results for s in (5, 5, 6))
        assert a["test"] == b["test"] and a["history"] == b["history"]
        assert a["train_ids"] == b["train_ids"] != c["train_ids"]
        small = select_rows(store, Plan(size=4, epochs=1, batch_size=4, val_size=2), seed=5)
        assert set(small.train_ids) <= set(a["train_ids"])  # nested across sizes


def test_refusals_name_the_fix(micro_store, synth_root, tmp_path):
    with FeatureStore.open(micro_store) as store:
        with pytest.raises(FeatcacheError, match=r"--size 13 is larger than the training split .*\(12 images\)"):
            train_from_store(store, TrainConfig(size=13, epochs=1), torch.device("cpu"))
        with pytest.raises(FeatcacheError, match="--augment"):
            train_from_store(store, quick_train(augment="mixup"), torch.device("cpu"))
    identity = tmp_path / "identity.zarr"
    extract(extract_config(synth_root, identity, views="identity"), progress=False)
    with FeatureStore.open(identity) as store:
        with pytest.raises(FeatcacheError, match="--views flips"):
            train_from_store(store, quick_train(), torch.device("cpu"))
        result = train_from_store(store, quick_train(augment="feature-flip"), torch.device("cpu")).results
        assert result["augment"] == "feature-flip"
    # A sweep refuses before it starts: nothing written, no progress shown.
    for bad in (quick_train(), TrainConfig(size=13, epochs=1), quick_train(decoder="mlp")):
        with pytest.raises(FeatcacheError, match="--views flips|larger than the training split|unknown decoder"):
            train_decoder(str(identity), bad, [0, 1], tmp_path / "sweep", "cpu", progress=False)
    assert not (tmp_path / "sweep").exists()
    with pytest.raises(FeatcacheError, match="distinct"):
        parse_seeds("1,1")
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]


def test_flip_per_sample_matches_views():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4).repeat(4, 1, 1, 1)  # [4, 2, 3, 4]
    out = flip_per_sample(x, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    assert torch.equal(out[2], x[2].flip(-2)) and torch.equal(out[3], x[3].flip(-2, -1))


def test_the_cache_changes_nothing_but_speed(micro_store):
    """A decoder trained from a float32 store with exact flips ends where one trained with the frozen
    encoder recomputing features of the flipped images at every step ends (same seed)."""
    cfg = quick_train(epochs=4, batch_size=3, seed=2)
    device = torch.device("cpu")
    with FeatureStore.open(micro_store) as store:
        plan = cfg.plan(store)
        rows = select_rows(store, plan, seed=2)
        masks_train, masks_val = store.masks(rows.train_rows), store.masks(rows.val_rows)
        cached = seeded_decoder(cfg, 32)
        from_store = fit(
            cached,
            RunInputs(
                2,
                StoreFeatures(store.features(rows.train_rows), "exact"),
                masks_train,
                StoreFeatures(store.features(rows.val_rows), "none"),
                masks_val,
            ),
            plan,
            cfg,
            device,
        )
        encoder = build_encoder("vit_micro", "random", seed=0)
        recomputed = seeded_decoder(cfg, 32)
        from_encoder = fit(
            recomputed,
            RunInputs(
                2,
                EncoderFeatures(encoder, store.images(rows.train_rows), trainable=False),
                masks_train,
                EncoderFeatures(encoder, store.images(rows.val_rows), trainable=False),
                masks_val,
            ),
            plan,
            cfg,
            device,
        )
    assert from_store.best.epoch == from_encoder.best.epoch
    np.testing.assert_allclose(from_store.history["train_loss"], from_encoder.history["train_loss"], rtol=1e-4)
    for name, value in cached.state_dict().items():
        torch.testing.assert_close(value, recomputed.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)
    # The comparison has teeth: with feature-space flips instead of exact views the weights differ.
    approx = seeded_decoder(cfg, 32)
    with FeatureStore.open(micro_store) as store:
        fit(
            approx,
            RunInputs(
                2,
                StoreFeatures(store.features(rows.train_rows), "feature-flip"),
                masks_train,
                StoreFeatures(store.features(rows.val_rows), "none"),
                masks_val,
            ),
            plan,
            dataclasses.replace(cfg, augment="feature-flip"),
            device,
        )
    assert not torch.allclose(approx.layers[0].weight, cached.layers[0].weight, rtol=1e-4, atol=1e-5)


def test_eval_at_original_size_reads_masks_from_disk(micro_store):
    with FeatureStore.open(micro_store) as store:
        at_store = train_from_store(store, quick_train(), torch.device("cpu")).results
        original = train_from_store(store, quick_train(eval_size="original"), torch.device("cpu")).results
    assert original["history"] == at_store["history"]
    assert original["test"]["iou"] == pytest.approx(at_store["test"]["iou"], abs=0.1)
    assert original["test"] != at_store["test"]


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
    seed_row, mean_row = table_rows(result.stdout)  # what results.json holds, then the summary over seeds
    assert seed_row == [
        "0",
        *(f"{run['test'][k]:.4f}" for k in METRICS),
        str(run["best_epoch"]),
        f"{run['train_seconds']:.1f}",
    ]
    assert mean_row[0] == "mean ± std" and mean_row[1] == f"{run['test']['iou']:.3f}±0.000"
    assert "C mode, 6 training images, 1 seeds (exact flips)" in result.stdout
    assert f"runs and summary.json in {tmp_path / 'run'}" in result.stdout
    too_big = cli("train-decoder", micro_store, "--size", "99", "--out", tmp_path / "x")
    assert too_big.returncode == 1 and "larger than the training split" in too_big.stderr


def test_sigkill_during_training_then_rerun_equals_uninterrupted(micro_store, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "ref"
    cfg = quick_train(epochs=6, batch_size=3)
    run_then_sigkill(
        f"""
        from featcache.experiment import train_decoder
        from featcache.train import TrainConfig
        train_decoder({str(micro_store)!r}, TrainConfig(**{dataclasses.asdict(cfg)!r}), [0, 1], {str(out)!r}, "cpu",
                      progress=False, checkpoint_seconds=0, grouped=True)
    """,
        after_saves=3,
    )
    assert (out / "resume-0-1.pt").exists() and not (out / "seed-0" / "results.json").exists()
    resumed = train_decoder(
        str(micro_store), cfg, [0, 1], out, "cpu", progress=False, checkpoint_seconds=0, grouped=True
    )
    plain = train_decoder(str(micro_store), cfg, [0, 1], reference, "cpu", progress=False, grouped=False)
    for a, b in zip(
        resumed.results, plain.results, strict=True
    ):  # grouped and resumed against sequential and uninterrupted
        assert a["best_epoch"] == b["best_epoch"]
        np.testing.assert_allclose(a["history"]["val_loss"], b["history"]["val_loss"], rtol=1e-4)
    assert not (out / "resume-0-1.pt").exists()
    grouped_ref = tmp_path / "grouped-ref"
    train_decoder(str(micro_store), cfg, [0, 1], grouped_ref, "cpu", progress=False, grouped=True)
    a, b = safe_torch_load(out / "seed-0" / "decoder.pt"), safe_torch_load(grouped_ref / "seed-0" / "decoder.pt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # bit-identical
    again = train_decoder(str(micro_store), cfg, [0, 1], out, "cpu", progress=False)  # finished seeds are kept
    assert [r["train_seconds"] for r in again.results] == [r["train_seconds"] for r in resumed.results]
    with pytest.raises(FeatcacheError, match="another configuration"):
        train_decoder(str(micro_store), dataclasses.replace(cfg, epochs=7), [0], out, "cpu", progress=False)


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


def test_grouped_seeds_equal_separate_runs(micro_store):
    """Three seeds trained as one grouped network end with the weights and metrics of three separate runs."""
    cfgs = [quick_train(epochs=4, batch_size=3, seed=s) for s in (0, 1, 2)]
    with FeatureStore.open(micro_store) as store:
        grouped = train_group_from_store(store, cfgs, torch.device("cpu"))
        separate = [train_from_store(store, c, torch.device("cpu")) for c in cfgs]
    for g, s in zip(grouped, separate, strict=True):
        assert g.results["train_ids"] == s.results["train_ids"] and g.results["best_epoch"] == s.results["best_epoch"]
        np.testing.assert_allclose(g.results["history"]["val_loss"], s.results["history"]["val_loss"], rtol=1e-4)
        for k in METRICS:
            assert g.results["test"][k] == pytest.approx(s.results["test"][k], abs=1e-3)
        for name, value in s.checkpoint["state_dict"].items():
            torch.testing.assert_close(g.checkpoint["state_dict"][name], value, rtol=1e-4, atol=1e-5, msg=name)
        assert g.results["group"]["runs"] == 3


def test_grouped_decoders_built_side_by_side_in_threads_start_from_their_own_seeds():
    """A concurrent sweep builds each size's decoder in its own thread; torch's global generator is shared."""
    cfgs = {k: [quick_train(seed=k), quick_train(seed=k + 10)] for k in range(6)}
    alone = {k: grouped_decoder(c, 16).state_dict() for k, c in cfgs.items()}
    built = {}

    def build(k):
        built[k] = grouped_decoder(cfgs[k], 16).state_dict()

    for _ in range(5):
        threads = [threading.Thread(target=build, args=(k,)) for k in cfgs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k, state in alone.items():
            assert all(torch.equal(built[k][name], value) for name, value in state.items()), k


def test_the_cpu_loop_runs_eagerly_and_times_every_epoch(micro_store):
    with FeatureStore.open(micro_store) as store:
        cfg = quick_train(epochs=3)
        rows = select_rows(store, cfg.plan(store), cfg.seed)
        features = StoreFeatures(store.features(rows.train_rows), cfg.augment)
        val = StoreFeatures(store.features(rows.val_rows, identity_only=True), "none")
        run = RunInputs(0, features, store.masks(rows.train_rows), val, store.masks(rows.val_rows))
        decoder = seeded_decoder(cfg, store.feature_width(), store.patch_size)
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            fit(decoder, run, cfg.plan(store), cfg, torch.device("cpu"), graphs=True)
        fitted = fit(decoder, run, cfg.plan(store), cfg, torch.device("cpu"))
    assert len(fitted.epoch_train_seconds) == 3 and sum(fitted.epoch_train_seconds) == pytest.approx(
        fitted.train_seconds
    )
    assert all(v.device.type == "cpu" for v in fitted.best.weights["decoder"].values())


def test_protocol_validation_size_is_capped_at_the_split_but_an_explicit_one_is_refused(micro_store):
    with FeatureStore.open(micro_store) as store:
        n_val = len(store.indices("val"))
        plan = TrainConfig(size=10).plan(store)  # the protocol's 5 fits; size 40's 20 would not
        assert (plan.epochs, plan.batch_size, plan.val_size, plan.note) == (1200, 5, 5, "")
        capped = plan_run(40, None, None, None, n_train=40, n_val=n_val, where="s.zarr")  # the protocol's 20 > 6
        assert (capped.epochs, capped.batch_size, capped.val_size) == (500, 10, n_val)
        assert f"capped at the {n_val} images" in capped.note
        assert TrainConfig(size=8, val_size=n_val).plan(store).val_size == n_val
        with pytest.raises(FeatcacheError, match="--val-size 20 is larger than the validation split"):
            TrainConfig(size=8, val_size=20).plan(store)


def test_torchrun_spreads_seeds_over_ranks(micro_store, tmp_path):
    cfg = quick_train(size=6, batch_size=3, val_size=3)
    single = train_decoder(str(micro_store), cfg, [0, 1], tmp_path / "one", "cpu", progress=False)
    result = run_torchrun("train-decoder", micro_store, *SMALL_SWEEP, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    for seed, ref in zip((0, 1), single.results, strict=True):
        ran = json.loads((tmp_path / "two" / f"seed-{seed}" / "results.json").read_text())
        np.testing.assert_allclose(ran["history"]["val_loss"], ref["history"]["val_loss"], rtol=1e-5)


def test_torchrun_rank_that_fails_stops_the_others(micro_store, tmp_path):
    """Rank 1 refuses its seed's resume state while rank 0 trains: the run ends, with the reason, instead of
    rank 0 waiting at the final gather for the collective timeout."""
    from featcache.io import torch_save

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
        train_decoder(str(micro_store), quick_train(lr=1000), [0], out, "cpu", progress=False, checkpoint_seconds=0)
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
        train_decoder(str(path), quick_train(), [0, 1], out, "cpu", progress=False, grouped=grouped)
    assert (out / "seed-0" / "results.json").exists() != grouped
    assert not (out / "seed-1").exists()


def test_masks_stored_as_0_1_are_labels_and_a_subset_of_empty_masks_is_refused(micro_store, synth_root, tmp_path, cli):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    rewrite_masks_as_0_1(data.glob("*_GroundTruth/*.png"))
    extract(extract_config(data, tmp_path / "01.zarr", views="identity"), progress=False)
    with FeatureStore.open(tmp_path / "01.zarr") as zero_one, FeatureStore.open(micro_store) as reference:
        assert torch.equal(zero_one.masks(None), reference.masks(None)) and reference.masks(None).any()
    empty = tmp_path / "empty.zarr"
    copy_zarr_arrays(micro_store, empty)["masks"][:] = 0
    refusal = rf"every mask of the training subset of {empty} \(size 8, seed 3\) is empty.*re-extract"
    with FeatureStore.open(empty) as store:
        with pytest.raises(FeatcacheError, match=refusal):
            train_from_store(store, quick_train(seed=3), torch.device("cpu"))
        with pytest.raises(FeatcacheError, match=refusal):
            train_group_from_store(store, [quick_train(seed=s) for s in (3, 4)], torch.device("cpu"))
    result = cli(
        "--device",
        "cpu",
        "train-decoder",
        empty,
        "--size",
        "4",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "2",
        "--out",
        tmp_path / "run",
    )
    one_line_error(result, "size 4, seed 0")
    assert not (tmp_path / "run" / "seed-0").exists()
