"""benchmarks/bench_select.py keeps working: a tiny run on synthetic and stored features prints its tables and
writes its figures."""

import json
import subprocess
import sys
from pathlib import Path

from featcache.selection import STRATEGIES

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_select.py"


def test_bench_select_times_every_strategy_and_budget(tmp_path, micro_store):
    out = tmp_path / "select.json"
    args = ["--n", "40", "--dim", "8", "--budgets", "3,50", "--repeats", "1", "--device", "cpu", "--json", out]
    result = subprocess.run(
        [sys.executable, BENCH, *map(str, args), "--store", micro_store], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["read_seconds"] > 0 and figures["open_seconds"] > 0 and len(figures["load"]) == 2
    assert list(figures["seconds"]) == ["synthetic 40 x 8", "micro.zarr: train 12 x 32"]
    for seconds in figures["seconds"].values():
        assert list(seconds) == list(STRATEGIES)
        for strategy in STRATEGIES:  # budget 50 > the rows: left out, "-" in the table
            assert list(seconds[strategy]) == ["3"] and seconds[strategy]["3"]["wall"] >= 0
