"""benchmarks/gpu.sh runs once per GPU session, rarely: its toy-scale CPU mode keeps the script itself working."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.data.layouts import find_samples

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"


@pytest.mark.slow
def test_gpu_script_smoke_mode_runs_every_step(tmp_path):
    env = {
        **os.environ,
        "SMOKE": "1",
        "PYTHON": sys.executable,
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
    }
    result = subprocess.run(["bash", str(GPU_SH)], capture_output=True, text=True, env=env)
    log = (tmp_path / "out" / "summary.log").read_text()
    assert result.returncode == 0 and "exit code" not in log and "budget is spent" not in log, log[-3000:]
    assert "== done" in log
    sweep = json.loads((tmp_path / "out" / "bench_sweep.json").read_text())
    assert list(sweep).index("protocol") < list(sweep).index("grouped")
    protocol = sweep["protocol"]
    assert set(protocol["sizes"]) == {"20", "10"} and protocol["wall_seconds"] > 0
    for row in protocol["sizes"].values():
        assert len(row["train_seconds"]) == 2 and 0 < row["finished_seconds"] <= protocol["wall_seconds"]
    assert set(sweep["grouped"]) == {"20", "10"} and set(sweep["sequential"]) == {"10"} and sweep["ratio"]["F"] > 0
    step = json.loads((tmp_path / "out" / "bench_step.json").read_text())
    assert [(r["arch"], r["batch_size"]) for r in step["rows"]] == [("vit_micro", b) for b in (5, 10, 50)]
    tail = json.loads((tmp_path / "out" / "bench_step_tail.json").read_text())
    assert set(tail["rows"][0]["peak_mib"]) == {"E", "C", "T1", "T2", "P2"}
    assert json.loads((tmp_path / "out" / "bench_extract.json").read_text())
    assert json.loads((tmp_path / "out" / "bench_profile.json").read_text())["top"]
    assert json.loads((tmp_path / "out" / "store_info.json").read_text())["complete"] is True
    assert json.loads((tmp_path / "out" / "data.json").read_text())["kind"].startswith("synthetic")
    summary = log[log.index("== summary") :]
    figures = ("data: synthetic", "protocol x 2 seeds, one call (C), wall", "bench_step vit_micro, batch 50")
    figures += ("bench_step Tk/Pk vit_micro, batch 10: E/T1", "T2 / E peak training memory")
    for figure in (*figures, "bench_profile, 5 runs grouped, batch 4"):
        assert figure in summary, summary


def fake_isic(root: Path, n: int) -> Path:
    """``n`` tiny image/mask pairs in the ISIC 2017 training folders under ``root``."""
    images, masks = root / "ISIC-2017_Training_Data", root / "ISIC-2017_Training_Part1_GroundTruth"
    images.mkdir(parents=True)
    masks.mkdir()
    for i in range(n):
        Image.fromarray(np.full((24, 32, 3), 40 * i, np.uint8)).save(images / f"ISIC_{i:07d}.jpg")
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 6:20] = 255
        Image.fromarray(mask).save(masks / f"ISIC_{i:07d}_segmentation.png")
    return root


def test_gpu_script_data_step_pairs_real_training_images_with_synthetic_val_and_test(tmp_path):
    src = fake_isic(tmp_path / "isic", 6)
    out = tmp_path / "gpu-data"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_DATA": str(out)}
    result = subprocess.run(["bash", str(GPU_SH), "data", str(src)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "real ISIC 2017 training images" in result.stdout
    index = find_samples(out)
    assert index.counts() == {"train": 6, "val": 150, "test": 600} and not index.split_note
    for sample in index.split("train"):
        assert sample.image.read_bytes() == (src / "ISIC-2017_Training_Data" / sample.image.name).read_bytes()
    assert {s.orig_hw for s in index.samples} == {(24, 32)}
    assert json.loads((out / "gpu-data.json").read_text())["counts"]["train"] == 6

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    env["GPU_DATA"] = str(foreign)
    result = subprocess.run(["bash", str(GPU_SH), "data", str(src)], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and (foreign / "notes.txt").exists()


def test_summary_shows_the_cuda_graphs_speed_up_that_only_a_gpu_run_measures(tmp_path):
    row = {"arch": "vit_b_16", "batch_size": 5, "E": 0.004, "F": 0.002, "C": 0.0002, "E/C": 20.0, "F/C": 10.0}
    row.update({"E/F": 2.0, "C eager": 0.0008, "C eager/C": 4.0})
    (tmp_path / "bench_step.json").write_text(json.dumps({"rows": [row]}))
    summary = [sys.executable, str(ROOT / "benchmarks" / "summary.py"), str(tmp_path)]
    # As gpu.sh runs it: wide enough for one row per line.
    result = subprocess.run(summary, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "C without / with CUDA graphs" in x)
    assert "4.0x" in line


def test_bench_step_measures_tk_and_pk_rows_each_in_a_process_of_its_own(tmp_path):
    out = tmp_path / "step.json"
    options = "--device cpu --archs vit_micro --image-size 32 --steps 1 --batch-size 2 --modes C,T1,P1,E".split()
    bench = [sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), *options, "--json", str(out)]
    result = subprocess.run(bench, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr[-2000:]
    (row,) = json.loads(out.read_text())["rows"]
    trainable = row["trainable"]
    assert 0 < trainable["C"] < trainable["T1"] == trainable["P1"] < trainable["E"]
    assert all(row[m] > 0 and row["peak_mib"][m] > 0 for m in ("C", "T1", "P1", "E"))
    assert "E/T1" in row and "goals (issue 22" in result.stdout


def test_summary_shows_issue_22s_ratios_and_memory(tmp_path):
    row = {"arch": "vit_b_16", "batch_size": 10, "E": 0.6, "C": 0.03, "T1": 0.09, "T2": 0.15, "P2": 0.33}
    row.update({"E/T1": 6.7, "P2/T2": 2.2, "peak_mib": {"E": 4000.0, "T2": 1000.0}})
    (tmp_path / "bench_step_tail.json").write_text(json.dumps({"rows": [row]}))
    summary = [sys.executable, str(ROOT / "benchmarks" / "summary.py"), str(tmp_path)]
    result = subprocess.run(summary, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "6.7x" in next(x for x in lines if "batch 10: E/T1" in x)
    assert "25%" in next(x for x in lines if "T2 / E peak training memory" in x)
    assert "0.6000 / 0.0300 / 0.0900 / 0.1500 / 0.3300" in next(x for x in lines if "E / C / T1 / T2 / P2" in x)
