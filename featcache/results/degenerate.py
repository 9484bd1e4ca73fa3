"""Degenerate runs: test predictions that say little whatever their IoU, such as a decoder that calls nearly every
pixel lesion (specificity near 0: its sensitivity looks perfect) or none (sensitivity near 0), or every test mask
predicted empty or full. Such runs are flagged in ``results.json``, the tables and the report."""

from __future__ import annotations

import torch

from featcache.results.records import RunResults, TestScores

#: A mean test specificity or sensitivity below this flags a run.
DEGENERATE_BELOW = 0.05
#: What a flag means, said once under each table and in the report.
DEGENERATE_RULE = (
    f"degenerate: test specificity or sensitivity below {DEGENERATE_BELOW}, or every test mask predicted empty "
    "or every one full"
)


def degenerate_reasons(test: TestScores, predicted: torch.Tensor) -> list[str]:
    """Why a run's test predictions are degenerate (empty when they are not).

    ``test``: the run's mean test scores; ``predicted``: its test masks, bool ``[n, H, W]`` (pixel = lesion).
    """
    reasons = [
        f"{name} {value:.3f} < {DEGENERATE_BELOW}"
        for name, value in (("specificity", test.specificity), ("sensitivity", test.sensitivity))
        if value < DEGENERATE_BELOW
    ]
    n = predicted.shape[0]
    if n and not predicted.any():
        reasons.append(f"all {n} test masks empty")
    elif n and predicted.all():
        reasons.append(f"all {n} test masks full")
    return reasons


def run_flags(run: RunResults) -> list[str]:
    """A run's degenerate reasons: as its ``results.json`` recorded them, or for a file written before the check,
    from its mean specificity and sensitivity alone."""
    if run.degenerate is not None:
        return run.degenerate
    return degenerate_reasons(run.test, torch.zeros(0, 1, dtype=torch.bool))


def count_degenerate(runs: list[RunResults]) -> int:
    """How many of ``runs`` are degenerate."""
    return sum(1 for r in runs if run_flags(r))
