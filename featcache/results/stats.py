"""Statistics over runs: mean and spread over seeds, paired differences with Student t intervals, and the choice
of a grid's combination on validation."""

from __future__ import annotations

import numpy as np

from featcache.results.metrics import METRICS
from featcache.results.records import RunResults
from featcache.results.timing import time_spread


def aggregate(results: list[RunResults]) -> dict:
    """Mean and sample std (ddof 1; 0 for one run) over runs of each test metric and of the timings:
    ``{"n_runs", "seeds", "mean": {name: value}, "std": {name: value}}`` (the summary.json schema), and the
    training seconds' ``median``, ``min``, ``max`` and ``outliers`` (seeds, `featcache.results.timing`)."""
    values = {k: np.array([r.test.as_dict()[k] for r in results], dtype=float) for k in METRICS}
    values["train_seconds"] = np.array([r.train_seconds for r in results], dtype=float)
    values["total_seconds"] = np.array([r.total_seconds for r in results], dtype=float)
    values["best_epoch"] = np.array([r.best_epoch for r in results], dtype=float)
    ddof = 1 if len(results) > 1 else 0
    times = time_spread(results)
    return {
        "n_runs": len(results),
        "seeds": [r.seed for r in results],
        "mean": {k: float(v.mean()) for k, v in values.items()},
        "std": {k: float(v.std(ddof=ddof)) for k, v in values.items()},
        "train_seconds": {
            "median": times.median,
            "min": times.low,
            "max": times.high,
            "outliers": list(times.outliers),
        },
    }


SELECTED = "selected on validation"


def number_name(x: float) -> str:
    """A learning rate or weight decay as folder names and tables write it: ``2e-4``, ``2.5e-4``, ``1e0``."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def select_on_validation(runs: list[RunResults]) -> RunResults:
    """Of one seed's runs over a grid, the one of lowest validation loss (the first of equals); test metrics
    choose nothing."""
    return min(runs, key=lambda r: r.best_val_loss)


def grid_summary(results: list[RunResults], combinations: list[tuple[float, float]], seeds: list[int]) -> dict:
    """Each (learning rate, weight decay)'s `aggregate` over seeds, and per seed the combination selected on
    validation with its test metrics, aggregated over seeds too."""
    by_combination: dict[tuple[float, float], list[RunResults]] = {}
    for r in results:
        by_combination.setdefault((r.lr, r.weight_decay), []).append(r)
    chosen = [select_on_validation([r for r in results if r.seed == seed]) for seed in seeds]
    return {
        "lrs": list(dict.fromkeys(lr for lr, _ in combinations)),
        "weight_decays": list(dict.fromkeys(wd for _, wd in combinations)),
        "grid": [{"lr": lr, "weight_decay": wd, **aggregate(by_combination[(lr, wd)])} for lr, wd in combinations],
        "selected_on_validation": {
            "criterion": "per seed, the combination of lowest validation loss; test metrics choose nothing",
            "choices": [
                {
                    "seed": r.seed,
                    "lr": r.lr,
                    "weight_decay": r.weight_decay,
                    "best_val_loss": r.best_val_loss,
                    "test": r.test.to_json(),
                }
                for r in chosen
            ],
            **aggregate(chosen),
        },
    }


#: Two-sided 95 % Student t quantiles for 1..30 degrees of freedom (normal beyond).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
PAIRS = (("C", "F"), ("F", "E"), ("C", "E"), ("Es", "E"), ("FI", "E"), ("F", "FI"), ("Es", "F"))


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired seeds and its 95 % t-interval (nan bounds for one pair)."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = t975(len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def group_runs(results: list[RunResults]) -> dict[tuple[str, int], list[RunResults]]:
    """Runs by (mode, size), each list sorted by seed."""
    groups: dict[tuple[str, int], list[RunResults]] = {}
    for r in sorted(results, key=lambda r: r.seed):
        groups.setdefault((r.mode, r.size), []).append(r)
    return groups
