"""featcache.results.tables: the numbers the command line's tables show are the results'."""

import io

import numpy as np
from rich.console import Console

from featcache.results.metrics import METRICS
from featcache.results.stats import aggregate, grid_summary
from featcache.results.tables import compare_table, grid_table, seeds_table
from tests.helpers import hand_made_results, table_rows


def render(table) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_seeds_table_shows_each_run_and_the_mean_and_std():
    runs = [
        hand_made_results(seed=0, iou=0.51234, train_seconds=1.25, best_epoch=4),
        hand_made_results(seed=3, iou=0.6, train_seconds=2.5, best_epoch=7),
    ]
    summary = aggregate(runs)
    text = render(seeds_table(runs, summary, "C · size 8"))
    assert "C · size 8" in text
    rows = table_rows(text)
    for row, r in zip(rows, runs, strict=False):
        assert row == [
            str(r.seed),
            *(f"{r.test.as_dict()[k]:.4f}" for k in METRICS),
            str(r.best_epoch),
            f"{r.train_seconds:.1f}",
        ]
    assert rows[0][1:3] == ["0.5123", "0.6123"] and rows[0][-1] == "1.2"
    ious = [0.51234, 0.6]
    last = rows[-1]
    assert last[0] == "mean ± std" and len(rows) == 3
    assert last[1] == f"{np.mean(ious):.3f}±{np.std(ious, ddof=1):.3f}" == "0.556±0.062"
    assert last[-2] == "6" and last[-1] == "1.9 ± 0.9"  # best epoch (4 + 7) / 2 rounds to even; seconds 1.875 ± 0.884


def test_compare_table_shows_mean_std_iou_and_seconds_per_size_and_mode():
    runs = [
        hand_made_results(mode="C", size=8, seed=0, iou=0.5, train_seconds=1.0),
        hand_made_results(mode="C", size=8, seed=1, iou=0.7, train_seconds=3.0),
        hand_made_results(mode="F", size=8, seed=0, iou=0.4, train_seconds=10.0),
        hand_made_results(mode="F", size=8, seed=1, iou=0.45, train_seconds=12.0),
        hand_made_results(mode="C", size=4, seed=0, iou=0.3, train_seconds=0.5),
        hand_made_results(mode="F", size=4, seed=0, iou=0.2, train_seconds=5.0),
    ]
    rows = table_rows(render(compare_table(runs)))
    assert rows == [
        ["8", f"0.600±{np.std([0.5, 0.7], ddof=1):.3f} 2.0s", f"0.425±{np.std([0.4, 0.45], ddof=1):.3f} 11.0s"],
        ["4", "0.300 0.5s", "0.200 5.0s"],  # one seed: no spread
    ]
    assert rows[0][1] == "0.600±0.141 2.0s"


def test_grid_table_shows_each_combination_and_the_selection_on_validation():
    def run(seed, lr, iou, val):
        return hand_made_results(
            seed=seed, iou=iou, best_val_loss=val, optimiser={"lr": lr, "weight_decay": 1e-4}, train_seconds=2.0
        )

    runs = [run(0, 1e-2, 0.5, 0.4), run(1, 1e-2, 0.7, 0.1), run(0, 2.5e-3, 0.9, 0.3), run(1, 2.5e-3, 0.6, 0.2)]
    summary = grid_summary(runs, [(1e-2, 1e-4), (2.5e-3, 1e-4)], [0, 1])
    text = render(grid_table(summary, "grid"))
    rows = table_rows(text)
    assert [row[:3] for row in rows] == [
        ["1e-2", "1e-4", "0.600±0.141"],
        ["2.5e-3", "1e-4", "0.750±0.212"],
        ["selected on validation", "per seed", "0.800±0.141"],  # seed 0 -> 2.5e-3 (0.9), seed 1 -> 1e-2 (0.7)
    ]
    assert all(row[-1] == "2.0" for row in rows)
    assert "seed 0 → lr 2.5e-3, wd 1e-4; seed 1 → lr 1e-2, wd 1e-4" in " ".join(text.split())
