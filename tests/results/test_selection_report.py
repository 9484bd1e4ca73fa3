"""The report's label-selection section from hand-made runs: random is the baseline (also when no selection was
recorded), each strategy is paired with it by seed as the modes are, nesting is stated, and nothing is added when
only random ran."""

import csv

import pytest
from rich.console import Console

from featcache.results.records import SelectionRecord
from featcache.results.selection_report import (
    baseline_runs,
    compare_strategies,
    selection_section,
    selection_table,
    strategies,
)
from featcache.results.stats import paired_difference
from tests.helpers import hand_made_results

IOU = {  # (strategy, size, seed) -> test IoU
    **{("random", s, k): 0.40 + 0.01 * k + 0.001 * s for s in (4, 8) for k in range(3)},
    **{("kcenter", s, k): 0.45 + 0.02 * k + 0.001 * s for s in (4, 8) for k in range(3)},
    **{("typiclust", 8, k): 0.38 + 0.005 * k for k in range(3)},
}


def runs(*, record_random: bool = True):
    out = []
    for (name, size, seed), iou in IOU.items():
        nested = name != "typiclust"
        record = SelectionRecord(name, seed, nested) if record_random or name != "random" else None
        out.append(hand_made_results(size=size, seed=seed, iou=iou))
        out[-1].selection = record
    return out


def test_random_is_the_baseline_recorded_or_not():
    for results in (runs(), runs(record_random=False)):
        assert strategies(results) == ["random", "kcenter", "typiclust"]
        assert {(r.size, r.seed) for r in baseline_runs(results)} == {(s, k) for s in (4, 8) for k in range(3)}


def test_each_strategy_is_paired_with_random_by_seed():
    rows = {(r.size, r.strategy): r for r in compare_strategies(runs())}
    assert [(r.size, r.strategy) for r in compare_strategies(runs())] == [
        (8, "random"),
        (8, "kcenter"),
        (8, "typiclust"),
        (4, "random"),
        (4, "kcenter"),
    ]
    for size, name in ((8, "kcenter"), (8, "typiclust"), (4, "kcenter")):
        expected = paired_difference(
            [IOU[(name, size, k)] for k in range(3)], [IOU[("random", size, k)] for k in range(3)]
        )
        row = rows[(size, name)]
        assert (row.difference, row.low, row.high) == pytest.approx(expected) and row.pairs == 3
    assert rows[(8, "random")].difference is None
    assert rows[(8, "kcenter")].mean == pytest.approx(0.45 + 0.02 + 0.008)


def test_the_section_states_nesting_and_writes_its_table_figure_and_csv(tmp_path):
    lines = selection_section(runs(), lr=2e-4, out=tmp_path)
    text = "\n".join(lines)
    assert "## Label selection against random" in text
    assert "**kcenter**: nested" in text and "**typiclust**: **not nested**" in text
    assert "| 8 | C | kcenter | 0.478 ± 0.020 | +0.060 | [0.035, 0.085] |" in text
    assert "| 4 | C | random | 0.414 ± 0.010 | | |" in text
    assert (tmp_path / "selection_vs_size.png").stat().st_size > 5000
    with open(tmp_path / "selection.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(IOU) and {r["selection"] for r in rows} == {"random", "kcenter", "typiclust"}
    assert {r["nested"] for r in rows if r["selection"] == "typiclust"} == {"False"}


def test_nothing_is_added_when_only_random_ran(tmp_path):
    only_random = [r for r in runs(record_random=False) if r.selection is None]
    assert selection_section(only_random, lr=2e-4, out=tmp_path) == []
    assert not (tmp_path / "selection.csv").exists()


def test_a_grid_compares_selections_at_the_modes_learning_rate(tmp_path):
    results = runs()
    for r in results:
        r.optimiser.lr = 1e-3
    assert selection_section(results, lr=2e-4, out=tmp_path) == []


def test_a_selection_file_is_named_in_the_section(tmp_path):
    results = [r for r in runs() if r.selection.strategy == "random"]
    for k in range(3):
        results.append(hand_made_results(size=8, seed=k, iou=0.5))
        results[-1].selection = SelectionRecord("file", None, True, file="mine.txt")
    text = "\n".join(selection_section(results, lr=2e-4, out=tmp_path))
    assert "**file** (`mine.txt`): size N trains on the file's first N ids for every seed" in text


def test_the_table_shows_the_differences():
    console = Console(width=200, record=True)
    console.print(selection_table(runs()))
    text = console.export_text()
    assert "kcenter" in text and "+0.060" in text and "[0.035, 0.085]" in text
