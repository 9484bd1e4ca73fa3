"""benchmarks/gpu.sh runs once per GPU session, rarely: its toy-scale CPU mode keeps the script itself working."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_smoke_mode_runs_every_step(tmp_path):
    env = {
        **os.environ,
        "SMOKE": "1",
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
    }
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh")], capture_output=True, text=True, env=env)
    log = (tmp_path / "out" / "summary.log").read_text()
    assert result.returncode == 0 and "exit code" not in log and "budget is spent" not in log, log[-3000:]
    assert "== done" in log
    sweep = json.loads((tmp_path / "out" / "bench_sweep.json").read_text())
    assert set(sweep["grouped"]) == {"20", "10"} and set(sweep["sequential"]) == {"10"} and sweep["ratio"]["F"] > 0
    step = json.loads((tmp_path / "out" / "bench_step.json").read_text())
    assert step and json.loads((tmp_path / "out" / "bench_extract.json").read_text())
    assert json.loads((tmp_path / "out" / "store_info.json").read_text())["complete"] is True
