import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in (
        "synth",
        "pretrain",
        "extract",
        "info",
        "train-decoder",
        "compare-e2e",
        "predict",
        "evaluate",
        "demo",
    ):
        assert command in result.stdout


def test_usage_error_exits_2(cli):
    result = cli("synth")
    assert result.returncode == 2


def test_featcache_error_is_one_line_exit_1(cli, tmp_path):
    result = cli("evaluate", tmp_path / "missing", tmp_path / "also-missing")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr
    debug = cli("--debug", "evaluate", tmp_path / "missing", tmp_path / "also-missing")
    assert "Traceback" in debug.stderr and debug.returncode == 1


def test_bad_device_is_one_line(cli, tmp_path):
    result = cli("--device", "tpu", "evaluate", tmp_path, tmp_path)
    assert result.returncode == 2  # an impossible option value is a usage error
    assert "--device 'tpu' is not one of auto, cpu, cuda, cuda:N" in result.stderr


def test_pretrain_command(synth_root, tmp_path, cli):
    out = tmp_path / "enc.pt"
    result = cli(
        "pretrain",
        synth_root,
        "--out",
        out,
        "--arch",
        "vit_micro",
        "--init",
        "random",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "best epoch 1" in result.stdout and out.exists() and (tmp_path / "enc_reconstructions.png").exists()
    bad = cli("pretrain", synth_root, "--out", out, "--arch", "vit_micro", "--lr", "-1")
    assert bad.returncode == 2 and "--lr" in bad.stderr


@pytest.fixture
def spawn():
    """Start ``python -m featcache ARGS`` the way ``cmd &`` in a script does: SIGINT ignored on entry.

    Each child gets its own session; its process group is killed at teardown whatever the test did, so
    no command outlives a failed or timed-out test.
    """
    started: list[subprocess.Popen] = []

    def start(*args: object, ignore_sigint: bool = True) -> subprocess.Popen:
        command = [sys.executable, "-m", "featcache", *map(str, args)]
        if ignore_sigint:  # what a shell does to a job started with '&' in a script; exec keeps it ignored
            command = ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
        proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()


def _wait_for(proc: subprocess.Popen, ready, seconds: float) -> None:
    """Poll ``ready()`` until it holds, the process ends, or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_ctrl_c_ends_with_130_and_keeps_the_resume_state(micro_store, tmp_path, spawn):
    out = tmp_path / "run"
    proc = spawn(
        "--device",
        "cpu",
        "train-decoder",
        micro_store,
        "--size",
        "8",
        "--seeds",
        "0",
        "--epochs",
        "100000",
        "--batch-size",
        "4",
        "--val-size",
        "4",
        "--checkpoint-seconds",
        "0",
        "--out",
        out,
    )
    _wait_for(proc, (out / "resume-0.pt").exists, 120)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.splitlines()[-1] == "interrupted", stderr
    assert (out / "resume-0.pt").exists()


@pytest.mark.parametrize("ignore_sigint", [True, False], ids=["inherited-ignored", "inherited-default"])
def test_ctrl_c_during_start_up_is_one_line(micro_store, spawn, ignore_sigint):
    proc = spawn("--device", "cpu", "info", micro_store, ignore_sigint=ignore_sigint)
    time.sleep(0.2)
    maps = Path(f"/proc/{proc.pid}/maps")
    if maps.parent.exists():  # Linux: wait until torch is being imported, before any command runs
        _wait_for(proc, lambda: "libtorch" in maps.read_text(), 60)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip() == "interrupted", stderr


def test_no_help_cuts_an_example_at_80_columns(monkeypatch):
    """typer would end a word longer than the help column with "…" (timm:vit_base_patch14_dinov2.lvd142m)."""
    import typer
    from typer.testing import CliRunner

    from featcache.cli.app import app

    runner = CliRunner()
    commands = typer.main.get_command(app).commands
    assert len(commands) >= 10
    for name in ("", *commands):
        result = runner.invoke(app, [*([name] if name else []), "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "…" not in result.output, (name, result.output)
        assert max(len(line) for line in result.output.splitlines()) <= 80
    text = runner.invoke(app, ["extract", "--help"], env={"COLUMNS": "80"}).output
    assert "vit_base_patch14_dinov2.lvd142" in "".join(text.split("│"))


def test_train_decoder_table_fits_80_columns_through_the_command_line(micro_store, tmp_path, cli):
    from tests.helpers import SMALL_SWEEP, table_rows

    result = cli("train-decoder", micro_store, *SMALL_SWEEP, "--out", tmp_path / "run", columns=80)
    assert result.returncode == 0, result.stderr
    table = result.stdout[: result.stdout.index("runs and summary.json")]  # then a path, which may be longer
    assert max(len(line) for line in table.splitlines()) <= 80, result.stdout
    rows = table_rows(result.stdout)
    assert [row[0].rstrip("*") for row in rows] == ["0", "1", "mean", "std", "median", "min–max"]  # * degenerate
    for row in rows[:2]:  # the per-seed scores whole: four decimals each
        assert all(len(cell) == 6 and cell.startswith(("0.", "1.")) for cell in row[1:5]), row
    assert (tmp_path / "run" / "seeds.png").stat().st_size > 5000


def test_evaluate_scores_the_predicted_images_and_says_how_many_truths_had_none(tmp_path, cli):
    import numpy as np

    from tests.helpers import lesion_mask, write_mask

    for i in range(5):
        write_mask(tmp_path / "truth" / f"ISIC_{i:07d}_segmentation.png", lesion_mask(16, 16))
    for i in range(2):
        write_mask(tmp_path / "pred" / f"ISIC_{i:07d}.png", lesion_mask(16, 16))
    result = cli("evaluate", tmp_path / "pred", tmp_path / "truth")
    assert result.returncode == 0, result.stderr
    assert "3 truth masks in" in result.stderr and "scored the 2 predicted images (--all requires every one)" in (
        " ".join(result.stderr.split())
    )
    assert "2 images" in result.stdout and np.isclose(float(result.stdout.split("iou")[1].split()[1]), 1.0)
    assert cli("evaluate", tmp_path / "pred", tmp_path / "truth", "--predicted-only").returncode == 0
    refused = cli("evaluate", tmp_path / "pred", tmp_path / "truth", "--all")
    assert refused.returncode == 1 and "3 truth masks" in refused.stderr and "drop --all" in refused.stderr
