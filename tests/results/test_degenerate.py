"""featcache.results.degenerate: runs whose test predictions say little are flagged, and why."""

import torch

from featcache.results.degenerate import count_degenerate, degenerate_reasons, run_flags
from featcache.results.records import RunResults, TestScores
from tests.helpers import hand_made_results


def scores(sensitivity=0.8, specificity=0.9):
    return TestScores(
        iou=0.5, dice=0.6, sensitivity=sensitivity, specificity=specificity, accuracy=0.8, thresholded_jaccard=0
    )


def masks(*fractions):
    """Bool [n, 4, 4] masks with the first ``fraction * 16`` pixels lesion."""
    out = torch.zeros(len(fractions), 16, dtype=torch.bool)
    for i, f in enumerate(fractions):
        out[i, : round(16 * f)] = True
    return out.view(-1, 4, 4)


def test_a_run_that_calls_every_pixel_lesion_is_degenerate():
    """The demo's case: specificity 0.000-0.002 with a sensitivity that looks perfect."""
    assert degenerate_reasons(scores(0.99, 0.002), masks(1, 0.9)) == ["specificity 0.002 < 0.05"]
    assert degenerate_reasons(scores(0.99, 0.0), masks(1, 1)) == ["specificity 0.000 < 0.05", "all 2 test masks full"]
    assert degenerate_reasons(scores(0.0, 1.0), masks(0, 0)) == ["sensitivity 0.000 < 0.05", "all 2 test masks empty"]
    assert degenerate_reasons(scores(), masks(0, 1, 0.5)) == []  # one empty, one full: not all


def test_results_json_records_the_flags_and_older_files_are_judged_by_their_scores():
    flagged = hand_made_results(degenerate=["all 6 test masks empty"])
    assert RunResults.from_json(flagged.to_json()).degenerate == ["all 6 test masks empty"]
    old = hand_made_results(test={**scores().to_json(), "specificity": 0.01})
    assert old.degenerate is None and "degenerate" not in old.to_json()
    assert run_flags(old) == ["specificity 0.010 < 0.05"]
    assert count_degenerate([flagged, old, hand_made_results()]) == 2
