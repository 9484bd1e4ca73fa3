"""featcache.results.timing: medians, spreads and outlier seeds, and the machine's load in words."""

import pytest

from featcache.core.machine import Environment, Machine
from featcache.results.timing import OUTLIER_MARK, environment_lines, outlier_seeds, time_spread
from tests.helpers import hand_made_results


def test_one_slow_seed_of_two_is_an_outlier():
    """The demo's case: seed 0 took 68.8 s under load, seed 1 3.1 s."""
    runs = [hand_made_results(seed=0, train_seconds=68.8), hand_made_results(seed=1, train_seconds=3.1)]
    spread = time_spread(runs)
    assert spread.outliers == (0,) and outlier_seeds(runs) == [0]
    assert spread.median == pytest.approx(35.95)
    assert spread.cell() == f"35.95 (3.10–68.80){OUTLIER_MARK}"


def test_three_times_the_fastest_is_not_yet_an_outlier_and_one_seed_has_no_spread():
    runs = [hand_made_results(seed=k, train_seconds=t) for k, t in enumerate((1.0, 3.0, 2.0))]
    spread = time_spread(runs)
    assert spread.outliers == () and spread.median == 2.0 and spread.cell() == "2.00 (1.00–3.00)"
    assert time_spread(runs[:1]).cell() == "1.00 (–)"


def machine(gpu=None):
    return Machine(cpu="Test CPU", cpu_count=2, threads=2, gpu=gpu, system="Linux", torch_version="2")


def test_the_report_says_whether_other_load_was_seen():
    quiet = Environment(machine=machine(), device="cpu", load_start=[0.1, 0.1, 0.1], load_end=[2.0, 1.0, 0.5])
    busy = Environment(machine=machine(), device="cpu", load_start=[3.4, 1.7, 1.7], load_end=[5.0, 3.0, 2.0])
    said = " ".join(environment_lines(busy))
    assert "Test CPU, 2 logical cores" in said and "3.40 at the start and 5.00 at the end" in said
    assert "other load was seen" in said
    assert "no other load was seen" in " ".join(environment_lines(quiet))
    assert "unknown" in " ".join(environment_lines(Environment(machine=machine(), device="cpu")))
