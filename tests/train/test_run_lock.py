"""featcache.train.run_lock: train-decoder, compare-e2e and pretrain lock their output as extract locks a store: taken
before anything is written, released at the end, a crashed run's lock recovered, a second run refused at once."""

import json
import os
import socket
import subprocess
import sys

import pytest

import featcache.train.sweep as sweep
from featcache.core.errors import FeatcacheError
from featcache.train import compare_e2e, train_decoder
from featcache.train.pretrain import pretrain
from featcache.train.run_lock import out_lock
from tests.helpers import CPU, quick_compare, quick_pretrain, quick_sweep

HOST = socket.gethostname()


@pytest.fixture
def live_pid():
    """The pid of a process that lives while the test runs."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def hold(path, pid) -> None:
    path.write_text(json.dumps({"host": HOST, "pid": pid, "since": "2026-05-01T10:00:00"}))


def test_a_second_run_into_the_same_folder_is_refused_at_once(micro_store, tmp_path, monkeypatch):
    """The first run holds RUN_DIR.lock from before its first file; the second, started meanwhile, writes nothing."""
    cfg = quick_sweep(micro_store, tmp_path / "run", size=4, seeds=(0,), epochs=1)
    lock = tmp_path / "run.lock"
    first_run = sweep.run_sweep
    seen = {}

    def second_run_meanwhile(store, planned, ctx):
        seen["lock"] = json.loads(lock.read_text())
        with pytest.raises(FeatcacheError) as info:
            train_decoder(cfg, ctx=CPU)
        seen["refusal"] = str(info.value)
        first_run(store, planned, ctx)

    monkeypatch.setattr(sweep, "run_sweep", second_run_meanwhile)
    train_decoder(cfg, ctx=CPU)
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == HOST
    assert seen["refusal"] == (
        f"the run folder {cfg.out} is being written by pid {os.getpid()} on {HOST} since {seen['lock']['since']}; "
        f"wait for it, or delete {lock} if that run is gone"
    )
    assert not lock.exists() and (cfg.out / "seed-0" / "results.json").exists()


@pytest.mark.parametrize("command", ["train-decoder", "compare-e2e", "pretrain"])
def test_a_live_owner_refuses_each_command_before_it_writes(micro_store, synth_root, tmp_path, live_pid, command):
    out = tmp_path / ("encoder.pt" if command == "pretrain" else "run")
    runs = {
        "train-decoder": lambda: train_decoder(quick_sweep(micro_store, out, size=4, seeds=(0,), epochs=1), ctx=CPU),
        "compare-e2e": lambda: compare_e2e(quick_compare(micro_store, out, sizes=(4,), modes=("C",)), ctx=CPU),
        "pretrain": lambda: pretrain(quick_pretrain(synth_root, out, epochs=1), ctx=CPU),
    }
    lock = out_lock(out, "").path
    hold(lock, live_pid)
    with pytest.raises(FeatcacheError, match=rf"^the \S+ \S+ {out} is being written by pid {live_pid} on {HOST} since"):
        runs[command]()
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]  # nothing written, the owner's lock kept


def test_a_crashed_run_s_lock_is_recovered_and_every_run_releases_its_own(micro_store, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cfg = quick_sweep(micro_store, tmp_path / "run", size=4, seeds=(0,), epochs=1)
    hold(tmp_path / "run.lock", dead.pid)
    train_decoder(cfg, ctx=CPU)
    assert f"recovered a stale lock on the run folder {cfg.out} left by pid {dead.pid}" in capsys.readouterr().err
    assert not (tmp_path / "run.lock").exists()
    with pytest.raises(FeatcacheError, match="--size 50"):  # refused after the lock was taken: released all the same
        train_decoder(quick_sweep(micro_store, cfg.out, size=50, seeds=(0,), epochs=1), ctx=CPU)
    assert not (tmp_path / "run.lock").exists()
