"""featcache.results.stats: mean and spread over seeds, paired differences, and a grid's choice on validation."""

import numpy as np
import pytest

from featcache.results.metrics import METRICS
from featcache.results.stats import (
    aggregate,
    grid_summary,
    group_runs,
    number_name,
    paired_difference,
    select_on_validation,
)
from tests.helpers import hand_made_results


def test_paired_difference_interval():
    mean, lo, hi = paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.7])
    assert mean == pytest.approx(0.2 / 3)
    assert lo < mean < hi and hi - mean == pytest.approx(4.303 * np.std([0.1, 0.1, 0.0], ddof=1) / np.sqrt(3))
    assert np.isnan(paired_difference([0.5], [0.4])[1])


def test_aggregate_is_the_mean_and_sample_std_over_runs():
    runs = [
        hand_made_results(seed=0, iou=0.5, train_seconds=1.0, best_epoch=3),
        hand_made_results(seed=1, iou=0.6, train_seconds=2.0, best_epoch=5),
        hand_made_results(seed=2, iou=0.8, train_seconds=6.0, best_epoch=10),
    ]
    summary = aggregate(runs)
    assert summary["n_runs"] == 3 and summary["seeds"] == [0, 1, 2]
    assert set(summary["mean"]) == set(summary["std"]) == {*METRICS, "train_seconds", "total_seconds", "best_epoch"}
    for name, values in (("iou", [0.5, 0.6, 0.8]), ("train_seconds", [1, 2, 6]), ("best_epoch", [3, 5, 10])):
        assert summary["mean"][name] == pytest.approx(np.mean(values))
        assert summary["std"][name] == pytest.approx(np.std(values, ddof=1))
    assert summary["mean"]["dice"] == pytest.approx(np.mean([0.6, 0.7, 0.9]))
    assert summary["std"]["specificity"] == 0 and summary["std"]["total_seconds"] == 0


def test_aggregate_of_one_run_has_std_0():
    summary = aggregate([hand_made_results(seed=4, iou=0.7)])
    assert summary["n_runs"] == 1 and summary["seeds"] == [4]
    assert summary["mean"]["iou"] == pytest.approx(0.7)
    assert all(v == 0.0 for v in summary["std"].values())


def test_select_on_validation_takes_the_lowest_validation_loss_never_the_test():
    a = hand_made_results(iou=0.9, best_val_loss=0.30)
    b = hand_made_results(iou=0.1, best_val_loss=0.20)
    c = hand_made_results(iou=0.5, best_val_loss=0.20)
    assert select_on_validation([a, b, c]) is b  # the first of equals, though c tests better
    assert select_on_validation([a]) is a


def grid_run(seed: int, lr: float, wd: float, *, iou: float, val: float):
    return hand_made_results(seed=seed, iou=iou, best_val_loss=val, optimiser={"lr": lr, "weight_decay": wd})


def test_grid_summary_aggregates_each_combination_and_selects_per_seed():
    combinations = [(1e-2, 1e-4), (1e-3, 1e-4), (1e-2, 0.0)]
    runs = [
        grid_run(0, 1e-2, 1e-4, iou=0.50, val=0.40),
        grid_run(1, 1e-2, 1e-4, iou=0.70, val=0.10),
        grid_run(0, 1e-3, 1e-4, iou=0.90, val=0.30),  # best test of seed 0, not its lowest validation loss
        grid_run(1, 1e-3, 1e-4, iou=0.60, val=0.20),
        grid_run(0, 1e-2, 0.0, iou=0.40, val=0.25),
        grid_run(1, 1e-2, 0.0, iou=0.30, val=0.50),
    ]
    summary = grid_summary(runs, combinations, [0, 1])
    assert summary["lrs"] == [1e-2, 1e-3] and summary["weight_decays"] == [1e-4, 0.0]
    assert [(g["lr"], g["weight_decay"]) for g in summary["grid"]] == combinations
    for entry, ious in zip(summary["grid"], ([0.5, 0.7], [0.9, 0.6], [0.4, 0.3]), strict=True):
        assert entry["n_runs"] == 2 and entry["seeds"] == [0, 1]
        assert entry["mean"]["iou"] == pytest.approx(np.mean(ious))
        assert entry["std"]["iou"] == pytest.approx(np.std(ious, ddof=1))
    selected = summary["selected_on_validation"]
    assert [(c["seed"], c["lr"], c["weight_decay"], c["best_val_loss"]) for c in selected["choices"]] == [
        (0, 1e-2, 0.0, 0.25),
        (1, 1e-2, 1e-4, 0.10),
    ]
    assert selected["choices"][0]["test"] == runs[4].test.to_json()
    assert selected["mean"]["iou"] == pytest.approx(np.mean([0.4, 0.7])) and selected["seeds"] == [0, 1]
    assert "test metrics choose nothing" in selected["criterion"]


def test_number_name_and_group_runs():
    assert [number_name(x) for x in (2e-4, 2.5e-4, 1.0, 0.0, 1e-10, 123.0)] == [
        "2e-4",
        "2.5e-4",
        "1e0",
        "0e0",
        "1e-10",
        "1.23e2",
    ]
    runs = [hand_made_results(mode=m, size=s, seed=k) for k in (2, 0, 1) for m in ("C", "F") for s in (4, 8)]
    groups = group_runs(runs)
    assert set(groups) == {("C", 4), ("C", 8), ("F", 4), ("F", 8)}
    assert all([r.seed for r in group] == [0, 1, 2] for group in groups.values())
    assert all(r.mode == m and r.size == s for (m, s), group in groups.items() for r in group)
