"""Training times over seeds, told robustly: the median with its spread (min-max over seeds), and the seeds whose
time is an outlier (more than `OUTLIER_FACTOR` times the fastest seed of the same mode and size, as a busy machine
makes one seed), so that one slow seed cannot pass for a slow mode."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featcache.core.machine import Environment
from featcache.results.records import RunResults

#: A seed whose time is more than this many times the fastest seed of its mode and size is an outlier.
OUTLIER_FACTOR = 3.0
#: Marks a time, or a ratio of times, with an outlier among its seeds.
OUTLIER_MARK = "†"
OUTLIER_NOTE = (
    f"{OUTLIER_MARK} an outlier among the seeds: one took more than {OUTLIER_FACTOR:g}x the fastest seed of its "
    "mode and size (other load on the machine, or a cold start); the per-seed times are in results.csv"
)


@dataclass(frozen=True)
class TimeSpread:
    """Training seconds over a group's seeds: median, min and max, the number of runs and the outlier seeds."""

    median: float
    low: float
    high: float
    n: int
    outliers: tuple[int, ...]

    def spread(self, digits: int = 2) -> str:
        """``3.05–68.80``, or ``–`` for one seed."""
        return "–" if self.n < 2 else f"{self.low:.{digits}f}–{self.high:.{digits}f}"

    def cell(self, digits: int = 2) -> str:
        """``3.10 (3.05–68.80)†``: the median, the spread, and the mark of an outlier among the seeds."""
        return f"{self.median:.{digits}f} ({self.spread(digits)}){self.mark}"

    @property
    def mark(self) -> str:
        return OUTLIER_MARK if self.outliers else ""


def outlier_seeds(runs: list[RunResults]) -> list[int]:
    """The seeds of ``runs`` (one mode and size) whose training time exceeds `OUTLIER_FACTOR` x the fastest's."""
    fastest = min(r.train_seconds for r in runs)
    return [r.seed for r in runs if r.train_seconds > OUTLIER_FACTOR * fastest]


def time_spread(runs: list[RunResults]) -> TimeSpread:
    """The `TimeSpread` of ``runs``' training seconds (one mode and size)."""
    seconds = np.array([r.train_seconds for r in runs], dtype=float)
    return TimeSpread(
        median=float(np.median(seconds)),
        low=float(seconds.min()),
        high=float(seconds.max()),
        n=len(runs),
        outliers=tuple(outlier_seeds(runs)),
    )


def environment_lines(environment: Environment | None) -> list[str]:
    """The report's sentences on the machine and the load it saw during the sweep."""
    if environment is None:
        return []
    machine = environment.machine
    lines = [f"Machine: {machine.describe()}; runs on {environment.device}."]
    start, end = environment.load_start, environment.load_end
    if start is None or end is None:
        return [*lines, "This system gives no load average: whether other work ran beside the sweep is unknown."]
    verdict = (
        "other load was seen, so the times may be inflated"
        if environment.other_load
        else "no other load was seen (the times are the sweep's own)"
    )
    lines.append(
        f"Load average (1 min) {start[0]:.2f} at the start and {end[0]:.2f} at the end, on "
        f"{machine.cpu_count} logical cores: {verdict}."
    )
    return lines
