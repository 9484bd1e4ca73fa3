"""Hyperparameter grids (learning rate x weight decay x seed) trained as one grouped network, exactly."""

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from featcache.core.context import Context
from featcache.core.errors import OptionError
from featcache.core.io import safe_torch_load
from featcache.results.metrics import METRICS
from featcache.store.feature_store import FeatureStore
from featcache.train import sweep as experiment
from featcache.train.compare import CompareConfig, compare_e2e
from featcache.train.config import TrainConfig
from featcache.train.run import train_from_store, train_group_from_store
from featcache.train.sweep import train_decoder
from tests.helpers import CPU, quick_sweep

QUICK = dict(size=8, epochs=3, batch_size=4, val_size=4)
LRS, WDS = [0.01, 0.05], [1e-4, 1e-2]


def grid_cfgs(seeds=(0, 1), **overrides) -> list[TrainConfig]:
    return [
        TrainConfig(**{**QUICK, **overrides}, lr=lr, weight_decay=wd, seed=seed)
        for lr in LRS
        for wd in WDS
        for seed in seeds
    ]


def assert_same_runs(grouped, separate, rtol=1e-4, atol=1e-5, metric_atol=1e-3) -> None:
    for g, s in zip(grouped, separate, strict=True):
        assert g.results.optimiser == s.results.optimiser and g.results.train_ids == s.results.train_ids
        assert g.results.best_epoch == s.results.best_epoch
        np.testing.assert_allclose(g.results.history.val_loss, s.results.history.val_loss, rtol=rtol)
        for k in METRICS:
            assert getattr(g.results.test, k) == pytest.approx(getattr(s.results.test, k), abs=metric_atol)
        for name, value in s.checkpoint.state_dict.items():
            torch.testing.assert_close(g.checkpoint.state_dict[name], value, rtol=rtol, atol=atol, msg=name)


def test_grouped_grid_equals_separate_runs_cpu(micro_store):
    """Two learning rates x two weight decays x two seeds as one grouped network: the eight separate runs."""
    cfgs = grid_cfgs()
    cpu = torch.device("cpu")
    with FeatureStore.open(micro_store) as store:
        grouped = train_group_from_store(store, cfgs, ctx=CPU)
        separate = [train_from_store(store, c, cpu) for c in cfgs]
    assert_same_runs(grouped, separate)
    assert grouped[0].results.group.lrs == [c.lr for c in cfgs]
    # The grid does something: another learning rate and another weight decay give other weights.
    w = [torch.cat([v.flatten().float() for v in grouped[k].checkpoint.state_dict.values()]) for k in (0, 2, 4)]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[0], w[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_grouped_grid_equals_separate_runs_cuda(micro_store):
    """The same on CUDA, where bf16 autocast and per-shape kernels allow bf16's precision, not bits."""
    cfgs = grid_cfgs()
    cuda = torch.device("cuda")
    with FeatureStore.open(micro_store) as store:
        grouped = train_group_from_store(store, cfgs, ctx=Context(device=cuda, cuda_graphs=True, progress=False))
        separate = [train_from_store(store, c, cuda) for c in cfgs]
    assert_same_runs(grouped, separate, rtol=2e-2, atol=2e-3, metric_atol=2e-2)


def test_grid_outputs_summary_and_selection_on_validation(micro_store, tmp_path, cli):
    out = tmp_path / "grid"
    sweep = train_decoder(quick_sweep(micro_store, out, lrs=tuple(LRS), weight_decays=tuple(WDS), **QUICK), ctx=CPU)
    names = ["lr-1e-2_wd-1e-4", "lr-1e-2_wd-1e-2", "lr-5e-2_wd-1e-4", "lr-5e-2_wd-1e-2"]
    for name in names:
        for seed in (0, 1):
            run = out / name / f"seed-{seed}"
            assert {"results.json", "decoder.pt", "loss_curve.png"} <= {p.name for p in run.iterdir()}
    assert not (out / "seed-0").exists()
    from featcache.results.predict import find_checkpoint
    from featcache.train.outputs import combination_name

    best = min(sweep.results, key=lambda r: r.best_val_loss)  # predict on the grid's folder: its best run
    folder = combination_name(best.optimiser.lr, best.optimiser.weight_decay)
    assert find_checkpoint(out) == out / folder / f"seed-{best.seed}" / "decoder.pt"
    summary = json.loads((out / "summary.json").read_text())
    assert [e["dir"] for e in summary["grid"]] == names and summary["lrs"] == LRS and summary["weight_decays"] == WDS
    by_run = {(r.optimiser.lr, r.optimiser.weight_decay, r.seed): r for r in sweep.results}
    for entry in summary["grid"]:
        ious = [by_run[(entry["lr"], entry["weight_decay"], s)].test.iou for s in (0, 1)]
        assert entry["mean"]["iou"] == pytest.approx(np.mean(ious)) and entry["std"]["iou"] == pytest.approx(
            np.std(ious, ddof=1)
        )
    selected = summary["selected_on_validation"]
    for choice in selected["choices"]:  # the lowest validation loss of its seed, whatever the test says
        runs = [r for r in sweep.results if r.seed == choice["seed"]]
        best = min(runs, key=lambda r: r.best_val_loss)
        assert (choice["lr"], choice["weight_decay"]) == (best.optimiser.lr, best.optimiser.weight_decay)
        assert choice["test"] == best.test.to_json()
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["selection"] for r in rows] == ["fixed"] * 4 + ["selected on validation"]
    assert float(rows[-1]["iou_mean"]) == pytest.approx(selected["mean"]["iou"])
    assert (out / "runs.csv").read_text().count("\n") == 9
    assert (out / "grid_iou.png").stat().st_size > 5000
    result = cli(
        "train-decoder",
        micro_store,
        "--size",
        "8",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--val-size",
        "4",
        "--seeds",
        "0,1",
        "--lr",
        "0.01,0.05",
        "--weight-decay",
        "1e-4,1e-2",
        "--out",
        out,
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("already finished, kept") == 8
    assert "selected on validation" in result.stdout and "5e-2" in result.stdout and "1e-2" in result.stdout


def interrupt_at(monkeypatch, label_part: str, epoch: int) -> None:
    """The progress row of the run whose label holds ``label_part`` raises KeyboardInterrupt after ``epoch``."""
    real = experiment.epoch_row

    def row(bar, label, epochs):
        inner = real(bar, label, epochs)

        def callback(end):
            inner(end)
            if label_part in label and end.epoch == epoch:
                raise KeyboardInterrupt

        return callback

    monkeypatch.setattr(experiment, "epoch_row", row)


@pytest.mark.parametrize("grouped", [False, True], ids=["one-by-one", "grouped"])
def test_a_killed_grid_resumes_and_keeps_finished_combinations(micro_store, tmp_path, monkeypatch, capsys, grouped):
    out, reference = tmp_path / "killed", tmp_path / "ref"
    options = dict(QUICK, epochs=4, grouped=grouped, lrs=tuple(LRS), weight_decays=tuple(WDS[:1]))
    every_epoch = dataclasses.replace(CPU, checkpoint_seconds=0)
    plain = train_decoder(quick_sweep(micro_store, reference, **options), ctx=every_epoch)
    interrupt_at(monkeypatch, "lr 5e-2 wd 1e-4 seed 1" if not grouped else "runs of the grid", 2)
    with pytest.raises(KeyboardInterrupt):
        train_decoder(quick_sweep(micro_store, out, **options), ctx=every_epoch)
    assert len(list(out.glob("resume-*.pt"))) == 1
    finished = sorted(p.parent for p in out.glob("*/seed-*/results.json"))
    assert len(finished) == (3 if not grouped else 0)
    kept = {p: (p / "results.json").read_text() for p in finished}
    monkeypatch.undo()
    capsys.readouterr()
    resumed = train_decoder(quick_sweep(micro_store, out, **options), ctx=every_epoch)
    assert "(epoch 2 finished)" in capsys.readouterr().err  # the interrupted run went on from its state
    assert all((p / "results.json").read_text() == text for p, text in kept.items())  # finished runs are kept
    assert not list(out.glob("resume-*.pt"))
    for a, b in zip(resumed.results, plain.results, strict=True):
        assert a.optimiser == b.optimiser and a.seed == b.seed
        assert a.best_epoch == b.best_epoch and a.history == b.history and a.test == b.test
    name = "lr-5e-2_wd-1e-4/seed-1/decoder.pt"
    x, y = safe_torch_load(out / name)["state_dict"], safe_torch_load(reference / name)["state_dict"]
    assert all(torch.equal(x[k], y[k]) for k in x)  # bit-identical to the uninterrupted grid


def test_a_single_value_writes_the_layout_of_one_run_per_seed(micro_store, tmp_path):
    default = train_decoder(quick_sweep(micro_store, tmp_path / "a", seeds=(0,), lrs=(0.01,), **QUICK), ctx=CPU)
    listed = train_decoder(
        quick_sweep(micro_store, tmp_path / "b", seeds=(0,), lrs=(0.01,), weight_decays=(1e-4,), **QUICK), ctx=CPU
    )
    for out in (tmp_path / "a", tmp_path / "b"):
        assert sorted(p.name for p in out.iterdir()) == ["seed-0", "seeds.png", "summary.csv", "summary.json"]
        assert (out / "summary.csv").read_text().splitlines()[0].startswith("mode,size,seed,iou,")
    assert "grid" not in default.summary and default.summary.keys() == listed.summary.keys()
    a, b = (dataclasses.replace(r, train_seconds=0, total_seconds=0) for r in (default.results[0], listed.results[0]))
    assert a == b


def test_compare_e2e_grid_for_c_mode_only(micro_store, tmp_path):
    cfg = CompareConfig(
        store=str(micro_store),
        out=tmp_path / "c",
        sizes=(8, 4),
        seeds=(0, 1),
        modes=("F", "C"),
        epochs=2,
        batch_size=4,
        val_size=3,
        lrs=(0.01, 0.05),
    )
    comparison = compare_e2e(cfg, ctx=CPU)
    lrs = {(r.mode, r.optimiser.lr) for r in comparison.results}
    assert lrs == {("F", 0.01), ("C", 0.01), ("C", 0.05)} and len(comparison.results) == 2 * 2 * 3
    assert (tmp_path / "c" / "runs" / "C" / "size-8" / "lr-5e-2" / "seed-1" / "results.json").exists()
    assert (tmp_path / "c" / "runs" / "F" / "size-8" / "seed-1" / "results.json").exists()
    report = (tmp_path / "c" / "report.md").read_text()
    assert "## Learning-rate grid" in report and "| size | lr 1e-2 | lr 5e-2 | selected on validation |" in report
    assert (tmp_path / "c" / "lr_grid.png").stat().st_size > 5000
    # The modes' own tables compare at the first learning rate: C there is C at 0.01 alone.
    c8 = [r.test.iou for r in comparison.results if r.mode == "C" and r.size == 8 and r.optimiser.lr == 0.01]
    row = next(line for line in report.split("## Test IoU")[1].splitlines() if line.startswith("| 8 |"))
    assert row.split(" | ")[2].startswith(f"{np.mean(c8):.3f} ± {np.std(c8, ddof=1):.3f}")  # then any degenerate
    with pytest.raises(OptionError, match="--grid-modes"):
        compare_e2e(dataclasses.replace(cfg, grid_modes=("X",)), ctx=CPU)


def test_a_grid_that_does_not_fit_trains_in_halves(micro_store, tmp_path, monkeypatch):
    """Out of device memory, a grouped grid trains again in halves, to the same results."""
    real, sizes = experiment.train_any_mode, []

    def small_memory(store, mode, cfgs, **options):
        sizes.append(len(cfgs))
        if len(cfgs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(store, mode, cfgs, **options)

    monkeypatch.setattr(experiment, "train_any_mode", small_memory)
    halves = train_decoder(quick_sweep(micro_store, tmp_path / "a", grouped=True, lrs=tuple(LRS), **QUICK), ctx=CPU)
    assert sizes == [4, 2, 2] and not list((tmp_path / "a").glob("resume-*.pt"))
    monkeypatch.undo()
    whole = train_decoder(quick_sweep(micro_store, tmp_path / "b", grouped=True, lrs=tuple(LRS), **QUICK), ctx=CPU)
    for a, b in zip(halves.results, whole.results, strict=True):
        assert a.optimiser == b.optimiser and a.best_epoch == b.best_epoch
        np.testing.assert_allclose(a.history.val_loss, b.history.val_loss, rtol=1e-5)
