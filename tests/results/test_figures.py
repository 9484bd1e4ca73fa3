"""featcache.results.figures (and seed_figure): what the figures draw, read back from the matplotlib figure."""

import numpy as np
import pytest
import torch

import featcache.results.figures as figures
import featcache.results.seed_figure as seed_figure
from featcache.results.figures import (
    Cases,
    clipped_errors,
    coinciding_modes,
    coinciding_words,
    plot_cases,
    plot_metrics_vs_size,
)
from featcache.results.stats import group_runs
from tests.helpers import hand_made_results


@pytest.fixture
def drawn(monkeypatch):
    """The figures that would have been saved, instead of saving them."""
    saved = []
    for module in (figures, seed_figure):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: saved.append(fig))
    return saved


def test_intervals_are_clipped_to_zero_and_one():
    below, above = clipped_errors([0.98, 0.02, 0.5], [0.1, 0.1, 0.1])
    np.testing.assert_allclose(below, [0.1, 0.02, 0.1])
    np.testing.assert_allclose(above, [0.02, 0.1, 0.1])


def test_specificity_beside_sensitivity_intervals_in_range_and_coinciding_modes_both_visible(drawn, tmp_path):
    runs = []
    for mode in ("E", "F", "C"):
        for size in (20, 10):
            for seed, iou in ((0, 0.5), (1, 0.78)):  # sensitivity iou + 0.2: 0.98, its interval past 1
                shift = 0.1 if mode == "E" else 0.0  # F and C agree exactly, as from a float32 store
                runs.append(hand_made_results(mode=mode, size=size, seed=seed, iou=iou - shift))
    groups = group_runs(runs)
    pairs = plot_metrics_vs_size(groups, ["E", "F", "C"], [20, 10], path=tmp_path / "m.png")
    assert pairs == [("F", "C")] == coinciding_modes(groups, ["E", "F", "C"], [20, 10])
    fig = drawn[0]
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["IoU", "Dice", "Sensitivity", "Specificity"]
    assert "F and C coincide" in " ".join(t.get_text() for t in fig.texts)
    assert coinciding_words([("E", "F"), ("E", "C"), ("Es", "FI")]) == "E, F and C; Es and FI"
    for ax in axes:
        for collection in ax.collections:  # the error bars' segments
            for segment in collection.get_segments():
                assert 0 <= segment[:, 1].min() and segment[:, 1].max() <= 1
    bars = {container.get_label(): container.lines[0] for container in axes[0].containers}
    f_line, c_line = bars["F"], bars["C"]
    assert not np.allclose(np.asarray(f_line.get_xdata(), float), np.asarray(c_line.get_xdata(), float))  # apart
    assert f_line.get_marker() != c_line.get_marker()
    assert not any("study" in line.get_label() for line in axes[0].lines)  # not the study's setting


def test_case_figure_says_all_lesion_and_empty_in_words(drawn, tmp_path):
    predictions = {("C", 10): torch.stack([torch.ones(8, 8), torch.zeros(8, 8), torch.eye(8)]).to(torch.uint8)}
    cases = Cases(
        ["a", "b", "c"], torch.zeros(3, 3, 8, 8, dtype=torch.uint8), torch.eye(8).repeat(3, 1, 1), predictions
    )
    plot_cases(cases, ["C"], [10], path=tmp_path / "cases.png")
    words = [[t.get_text() for t in ax.texts] for ax in drawn[0].axes]
    assert words == [["all lesion"], ["empty prediction"], []]


def test_seeds_figure_draws_every_seed_and_its_test_scores(drawn, tmp_path):
    history = {"train_loss": [0.7, 0.5, 0.4], "val_loss": [0.6, 0.5, 0.55]}
    runs = [hand_made_results(seed=k, iou=0.5 + 0.1 * k, history=history, best_epoch=2) for k in range(3)]
    runs[2].degenerate = ["all 6 test masks full"]
    seed_figure.plot_seeds(runs, tmp_path / "seeds.png", title="C · 8 images · 3 seeds")
    curves, scores = drawn[0].axes
    assert [line.get_label() for line in curves.lines if not line.get_label().startswith("_")] == [
        "seed 0",
        "seed 1",
        "seed 2",
    ]
    iou = next(line for line in scores.lines if line.get_label() == "test IoU")
    np.testing.assert_allclose(iou.get_ydata(), [0.5, 0.6, 0.7])
    assert any(line.get_label() == "degenerate" for line in scores.lines)
