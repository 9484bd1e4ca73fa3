"""featcache.results.export: the CSV files of runs and of a grid's combinations with the choice on validation."""

import csv

import pytest

from featcache.results.export import write_grid_csv, write_runs_csv
from featcache.results.metrics import METRICS
from featcache.results.stats import SELECTED, grid_summary
from tests.helpers import hand_made_results


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def run(seed, iou, lr=2e-4, weight_decay=1e-4, val_loss=0.5):
    return hand_made_results(
        seed=seed, iou=iou, best_val_loss=val_loss, optimiser={"lr": lr, "weight_decay": weight_decay}
    )


def test_one_row_per_run_with_its_metrics_in_order(tmp_path):
    path = tmp_path / "runs.csv"
    write_runs_csv([run(0, 0.5), run(1, 0.25)], path)
    header, first, second = read_csv(path)
    assert header == [
        "mode",
        "size",
        "seed",
        *METRICS,
        "best_epoch",
        "train_seconds",
        "total_seconds",
        "augment",
        "device",
    ]
    assert first[:4] == ["C", "8", "0", "0.5"] and second[2:4] == ["1", "0.25"]
    assert [float(x) for x in first[4:9]] == pytest.approx([0.6, 0.7, 0.9, 0.8, 0.4])
    assert first[9:] == ["5", "2.0", "3.0", "exact", "cpu"]
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]  # written atomically: no temporary file left


def test_with_the_optimiser_each_row_says_its_learning_rate_and_weight_decay(tmp_path):
    path = tmp_path / "runs.csv"
    write_runs_csv([run(0, 0.5, lr=1e-3, weight_decay=0.0)], path, optimiser=True)
    header, row = read_csv(path)
    assert header[3:5] == ["lr", "weight_decay"] and row[3:5] == ["0.001", "0.0"] and row[5] == "0.5"


def test_a_grid_row_per_combination_then_the_selection_per_seed(tmp_path):
    runs = [
        run(0, 0.6, lr=1e-3, val_loss=0.2),
        run(1, 0.4, lr=1e-3, val_loss=0.9),
        run(0, 0.3, lr=1e-4, val_loss=0.5),
        run(1, 0.5, lr=1e-4, val_loss=0.1),
    ]
    summary = grid_summary(runs, [(1e-3, 1e-4), (1e-4, 1e-4)], [0, 1])
    path = tmp_path / "grid.csv"
    write_grid_csv(summary, path)
    header, fast, slow, selected = read_csv(path)
    assert header[:6] == ["selection", "lr", "weight_decay", "n_runs", "iou_mean", "iou_std"]
    assert header[-4:] == ["best_epoch_mean", "best_epoch_std", "train_seconds_mean", "train_seconds_std"]
    assert len(header) == 4 + 2 * (len(METRICS) + 2)
    assert fast[:4] == ["fixed", "0.001", "0.0001", "2"] and float(fast[4]) == pytest.approx(0.5)
    assert float(fast[5]) == pytest.approx(0.1414213, abs=1e-6)  # sample std of 0.6 and 0.4
    assert slow[:4] == ["fixed", "0.0001", "0.0001", "2"] and float(slow[4]) == pytest.approx(0.4)
    # Seed 0 chose 1e-3 (validation loss 0.2), seed 1 chose 1e-4 (0.1): their test IoUs 0.6 and 0.5.
    assert selected[:4] == [SELECTED, "0.001;0.0001", "0.0001;0.0001", "2"]
    assert float(selected[4]) == pytest.approx(0.55)
