

def test_help_lists_commands(cli):
    result = cli("--help")
    assert result.returncode == 0
    for command in ("synth", "pretrain", "extract", "info", "train-decoder", "compare-e2e", "predict", "evaluate", "demo"):
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
    result = cli("pretrain", synth_root, "--out", out, "--arch", "vit_micro", "--init", "random", "--epochs", "1",
                 "--batch-size", "4", "--image-size", "32", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "best epoch 1" in result.stdout and out.exists() and (tmp_path / "enc_reconstructions.png").exists()
    bad = cli("pretrain", synth_root, "--out", out, "--arch", "vit_micro", "--lr", "-1")
    assert bad.returncode == 2 and "--lr" in bad.stderr


def test_ctrl_c_ends_with_130_and_keeps_the_resume_state(micro_store, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "featcache", "--device", "cpu", "train-decoder", str(micro_store), "--size", "8",
                             "--seeds", "0", "--epochs", "100000", "--batch-size", "4", "--val-size", "4",
                             "--checkpoint-seconds", "0", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "resume-0.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr
    assert (out / "resume-0.pt").exists()
