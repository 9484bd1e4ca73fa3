import json

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.results.records import RunResults
from featcache.train import CompareConfig, compare_e2e
from tests.helpers import CPU, copy_zarr_arrays, run_torchrun


@pytest.fixture(scope="module")
def comparison(micro_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = CompareConfig(
        store=str(micro_store),
        out=out,
        sizes=(8, 4),
        seeds=(0, 1),
        modes=("E", "Es", "F", "FI", "C"),
        epochs=3,
        batch_size=4,
        val_size=3,
        lrs=(0.01,),
    )
    return compare_e2e(cfg, ctx=CPU)


def test_every_mode_runs_on_the_same_subsets(comparison):
    runs = {(r.mode, r.size, r.seed): r for r in comparison.results}
    assert len(runs) == 5 * 2 * 2
    for size in (8, 4):
        for seed in (0, 1):
            ids = {tuple(runs[(m, size, seed)].train_ids) for m in ("E", "Es", "F", "FI", "C")}
            assert len(ids) == 1
    path = comparison.out / "runs" / "E" / "size-8" / "seed-1" / "results.json"
    assert json.loads(path.read_text())["mode"] == "E"


def test_store_mode_reproduces_the_frozen_pipeline(comparison):
    """float32 store + exact views: C and F see the same features, so they train alike."""
    runs = {(r.mode, r.size, r.seed): r for r in comparison.results}
    for size in (8, 4):
        c, f = runs[("C", size, 0)], runs[("F", size, 0)]
        np.testing.assert_allclose(c.history.val_loss, f.history.val_loss, rtol=1e-4)
        # End to end differs: the encoder itself moves.
        assert runs[("E", size, 0)].history.val_loss != f.history.val_loss


def test_report_has_every_part(comparison):
    report = (comparison.out / "report.md").read_text()
    for heading in ("## Test IoU", "## Training time", "## Paired differences", "## Loss curves", "## Cases"):
        assert heading in report
    assert "| 8 | C − F |" in report
    for png in ("metrics_vs_size.png", "loss_curves.png", "cases.png"):
        assert (comparison.out / png).stat().st_size > 5000
    assert (comparison.out / "results.csv").read_text().count("\n") == 21
    # Synthetic data and a random micro ViT: neither the study's lines nor its words.
    assert "study E" not in report and "not its setting" in report and "synthetic data" in report
    assert "self-supervised" not in report and "- **F**: random ViT-micro frozen" in report
    assert "## Degenerate runs" in report and "Load average" in report


def test_each_run_names_its_encoder_and_flags_degenerate_predictions(comparison):
    runs = {(r.mode, r.size, r.seed): r for r in comparison.results}
    for mode, trained in (("E", True), ("Es", True), ("F", False), ("FI", False), ("C", False)):
        saved = RunResults.read(comparison.out / "runs" / mode / "size-8" / "seed-0" / "results.json")
        assert saved.encoder.description == "random ViT-micro" and saved.encoder.trained is trained
        assert saved.encoder.arch == "vit_micro" and saved.encoder.source.kind == "random"
        assert saved.degenerate == runs[(mode, 8, 0)].degenerate is not None
    report = (comparison.out / "report.md").read_text()
    for r in comparison.results:  # the flags agree with the scores, and the report lists every flagged run
        said = " ".join(r.degenerate)
        assert ("specificity" in said) == (r.test.specificity < 0.05)
        assert ("sensitivity" in said) == (r.test.sensitivity < 0.05)
        assert (f"- {r.mode}, size {r.size}, seed {r.seed}: " in report) == bool(r.degenerate)


def test_another_encoder_is_refused(micro_store, tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    tv = VisionTransformer(224, 16, 2, 2, 32, 64)
    torch.save(tv.state_dict(), tmp_path / "other.pth")
    cfg = CompareConfig(
        store=str(micro_store),
        out=tmp_path / "c",
        encoder=str(tmp_path / "other.pth"),
        sizes=(4,),
        seeds=(0,),
        modes=("F",),
        epochs=1,
        val_size=2,
    )
    with pytest.raises(FeatcacheError, match="was written by vit_micro .* not by vit_micro"):
        compare_e2e(cfg, ctx=CPU)
    with pytest.raises(FeatcacheError, match="exceed the training split"):
        compare_e2e(
            CompareConfig(
                store=str(micro_store),
                out=tmp_path / "d",
                sizes=(99,),
                seeds=(0,),
                modes=("C",),
                epochs=1,
                val_size=2,
            ),
            ctx=CPU,
        )


def test_torchrun_two_cpu_ranks_give_the_same_results(micro_store, comparison, tmp_path):
    out = tmp_path / "ranks"
    result = run_torchrun(
        "compare-e2e",
        micro_store,
        "--sizes",
        "8,4",
        "--seeds",
        "0,1",
        "--modes",
        "E,Es,F,FI,C",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--val-size",
        "3",
        "--lr",
        "0.01",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("report:") == 1  # rank 0 alone reports
    one = {(r.mode, r.size, r.seed): r for r in comparison.results}
    two = {
        (r.mode, r.size, r.seed): r for r in (RunResults.read(p) for p in out.glob("runs/*/size-*/seed-*/results.json"))
    }
    assert one.keys() == two.keys()
    for key in one:  # equal up to the thread count's summation order (1 thread per rank here, 2 in the fixture)
        np.testing.assert_allclose(one[key].history.val_loss, two[key].history.val_loss, rtol=1e-5)
        for metric, value in one[key].test.as_dict().items():
            assert two[key].test.as_dict()[metric] == pytest.approx(value, abs=1e-4), (key, metric)
    assert (out / "report.md").exists()


def test_a_subset_of_empty_masks_is_refused_in_store_and_encoder_modes(micro_store, tmp_path):
    store = tmp_path / "empty.zarr"
    copy_zarr_arrays(micro_store, store)["masks"][:] = 0
    for mode in ("C", "F", "E"):
        cfg = CompareConfig(
            store=str(store),
            out=tmp_path / mode,
            sizes=(4,),
            seeds=(2,),
            modes=(mode,),
            epochs=1,
            batch_size=4,
            val_size=2,
        )
        with pytest.raises(FeatcacheError, match=r"every mask of the training subset .* \(size 4, seed 2\) is empty"):
            compare_e2e(cfg, ctx=CPU)


def test_a_diverging_end_to_end_run_stops_with_one_line(micro_store, tmp_path):
    cfg = CompareConfig(
        store=str(micro_store),
        out=tmp_path / "c",
        sizes=(4,),
        seeds=(0,),
        modes=("E",),
        epochs=2,
        batch_size=4,
        val_size=2,
        lrs=(1e30,),
    )
    with pytest.raises(FeatcacheError, match=r"loss of seed 0 at size 4 is not finite at epoch 1; lower --lr"):
        compare_e2e(cfg, ctx=CPU)


def test_a_comparison_reads_the_store_once_for_its_c_runs_and_once_for_its_encoder_runs(
    micro_store, tmp_path, monkeypatch
):
    import featcache.train.compare
    import featcache.train.rows
    import featcache.train.run
    import featcache.train.sizes

    reads = []
    load = featcache.train.rows.load_splits

    def counted(store, runs, device, *, images=False, tokens=False):
        reads.append(("images" if images else "tokens" if tokens else "features", len(runs)))
        return load(store, runs, device, images=images, tokens=tokens)

    for module in (featcache.train.run, featcache.train.sizes, featcache.train.compare):
        monkeypatch.setattr(module, "load_splits", counted)
    cfg = CompareConfig(
        store=str(micro_store),
        out=tmp_path / "cmp",
        sizes=(8, 4),
        seeds=(0, 1),
        modes=("F", "C"),
        epochs=1,
        batch_size=4,
        val_size=3,
    )
    assert len(compare_e2e(cfg, ctx=CPU).results) == 2 * 2 * 2
    assert reads == [("features", 4), ("images", 4)]  # (size, seed) runs per read
