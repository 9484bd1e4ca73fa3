"""featcache.results.tables: the numbers the command line's tables show are the results'."""

import io

import numpy as np
from rich.console import Console

from featcache.results.metrics import METRICS
from featcache.results.stats import aggregate, grid_summary
from featcache.results.tables import compare_table, grid_table, seeds_table
from tests.helpers import hand_made_results, table_rows


def render(table, width: int = 200) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_seeds_table_shows_each_run_the_mean_and_std_and_the_median_time():
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
    mean, std, median, spread = rows[2:]
    assert mean[0] == "mean" and mean[1] == f"{np.mean(ious):.3f}" == "0.556"
    assert std[0] == "std" and std[1] == f"{np.std(ious, ddof=1):.3f}" == "0.062"
    assert median[-1] == "1.9" and spread[-2:] == ["4–7", "1.2–2.5"]  # the kept epochs' range, not their mean
    assert mean[-2] == "" and len(rows) == 6


def test_one_seed_shows_a_dash_for_every_spread():
    runs = [hand_made_results(seed=0, iou=0.5, train_seconds=2.0)]
    mean, std, median, spread = table_rows(render(seeds_table(runs, aggregate(runs), "one")))[1:]
    assert set(std[1:7]) == {"–"} and spread[-2:] == ["–", "–"] and median[-1] == "2.0"
    rows = table_rows(render(compare_table(runs)))
    assert rows == [["8", "C", "0.500", "–", "2.00", "–", ""]]


def test_compare_table_shows_iou_mean_and_std_and_the_median_time_per_size_and_mode():
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
        ["8", "C", "0.600", f"{np.std([0.5, 0.7], ddof=1):.3f}", "2.00", "1.00–3.00", ""],
        ["8", "F", "0.425", f"{np.std([0.4, 0.45], ddof=1):.3f}", "11.00", "10.00–12.00", ""],
        ["4", "C", "0.300", "–", "0.50", "–", ""],
        ["4", "F", "0.200", "–", "5.00", "–", ""],
    ]


def test_an_outlier_seed_and_a_degenerate_run_are_flagged_in_the_tables():
    """Seed 0 took 68.8 s under load, seed 1 3.1 s; seed 1 called every pixel lesion."""
    everything = {"iou": 0.3, "dice": 0.4, "sensitivity": 1.0, "specificity": 0.001, "accuracy": 0.3}
    runs = [
        hand_made_results(seed=0, iou=0.5, train_seconds=68.8),
        hand_made_results(seed=1, train_seconds=3.1, test={**everything, "thresholded_jaccard": 0.0}),
    ]
    text = render(compare_table(runs))
    assert table_rows(text)[0][4:] == ["35.95†", "3.10–68.80", "1/2 degenerate; outlier seed 0"]
    flat = " ".join(text.split())
    assert "more than 3x the fastest seed" in flat and "specificity or sensitivity below 0.05" in flat
    rows = table_rows(render(seeds_table(runs, aggregate(runs), "two seeds")))
    assert rows[0][-1] == "68.8†" and rows[1][0] == "1*"


def test_tables_fit_80_columns_without_breaking_a_number():
    runs = [
        hand_made_results(mode=m, size=size, seed=k, iou=0.51178, train_seconds=123.456 * (k + 1))
        for m in ("E", "Es", "F", "FI", "C")
        for size in (2000, 10)
        for k in (0, 1, 2)
    ]
    c_runs = [r for r in runs if r.mode == "C" and r.size == 10]
    grid = grid_summary(
        [
            hand_made_results(seed=k, optimiser={"lr": lr, "weight_decay": 1e-4})
            for lr in (1e-2, 2.5e-3)
            for k in (0, 1)
        ],
        [(1e-2, 1e-4), (2.5e-3, 1e-4)],
        [0, 1],
    )
    tables = [
        seeds_table(c_runs, aggregate(c_runs), "C mode, 10 training images, 3 seeds (exact flips)"),
        compare_table(runs),
        grid_table(grid, "C mode, 10 training images, 2 (lr, weight decay) x 2 seeds (exact flips)"),
    ]
    for table in tables:
        text = render(table, width=80)
        assert max(len(line) for line in text.splitlines()) <= 80, text
        cells = [cell for row in table_rows(text) for cell in row]
        assert "…" not in text
        for cell in cells:  # every number whole: no cell ends or starts in the middle of one
            assert not cell.endswith(".") and not cell.startswith("."), text
    seeds_text = render(tables[0], width=80)
    assert "0.5118" in seeds_text and "TJ left out to fit 80 columns" in " ".join(seeds_text.split())
    assert "0.512" in render(tables[1], width=80)


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
    assert all(row[-1] == "2.0 (2.0–2.0)" for row in rows)  # median (min–max) over seeds
    assert "seed 0 → lr 2.5e-3, wd 1e-4; seed 1 → lr 1e-2, wd 1e-4" in " ".join(text.split())
