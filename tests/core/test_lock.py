"""featcache.core.lock: one writer per store, stale locks of dead processes recovered, one-line refusals."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from featcache.core.errors import FeatcacheError
from featcache.core.lock import WriterLock

HOST = socket.gethostname()


@pytest.fixture
def live_process():
    """A process that stays alive while the test runs; ended (by its pid) afterwards."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def write_owner(path, pid, host=HOST, since="2026-01-01T00:00:00"):
    path.write_text(json.dumps({"host": host, "pid": pid, "since": since}))


def test_acquire_writes_the_owner_and_release_removes_it(tmp_path):
    path = tmp_path / "sub" / "s.zarr.lock"
    with WriterLock(path, "the store s.zarr") as lock:
        assert lock.held
        owner = json.loads(path.read_text())
        assert owner["host"] == HOST and owner["pid"] == os.getpid() and owner["since"]
    assert not path.exists() and not lock.held
    lock.release()  # released twice: nothing to do
    with WriterLock(path, "the store s.zarr"):  # free again
        assert path.exists()


def test_a_second_writer_is_refused_while_the_owner_lives(tmp_path, live_process):
    path = tmp_path / "s.lock"
    write_owner(path, live_process.pid)
    before = path.read_text()
    second = WriterLock(path, "the store s.zarr")
    with pytest.raises(FeatcacheError) as info:
        second.acquire()
    message = str(info.value)
    assert message == (
        f"the store s.zarr is being written by pid {live_process.pid} on {HOST} since 2026-01-01T00:00:00; "
        f"wait for it, or delete {path} if that run is gone"
    )
    second.release()  # refused, so it holds nothing and must not delete the owner's lock
    assert path.read_text() == before


def test_a_lock_held_in_this_process_refuses_another(tmp_path):
    path = tmp_path / "s.lock"
    with WriterLock(path, "the store"):
        with pytest.raises(FeatcacheError, match=rf"being written by pid {os.getpid()} on {HOST}"):
            WriterLock(path, "the store").acquire()
        assert path.exists()


def test_the_stale_lock_of_a_dead_process_is_recovered_with_a_note(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "s.lock"
    write_owner(path, dead.pid)
    with WriterLock(path, "the store s.zarr"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"recovered a stale lock on the store s.zarr left by pid {dead.pid} (no longer running)" in err


def test_a_lock_of_another_host_or_unreadable_is_not_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "s.lock"
    write_owner(path, dead.pid, host="elsewhere")  # its pid cannot be checked from here
    with pytest.raises(FeatcacheError, match=rf"by pid {dead.pid} on elsewhere since"):
        WriterLock(path, "the store").acquire()
    path.write_text("not json")
    with pytest.raises(FeatcacheError, match=rf"by pid \? on \? since \?; wait for it, or delete {path} if"):
        WriterLock(path, "the store").acquire()
    assert path.read_text() == "not json"


def test_a_read_only_folder_is_one_line(tmp_path, monkeypatch):
    # chmod cannot refuse root, who runs these tests in CI: os.open refuses instead, as a read-only mount does.
    folder = tmp_path / "ro"
    folder.mkdir()
    real_open = os.open

    def refused(path, flags, *args, **kwargs):
        if os.fsdecode(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    with pytest.raises(FeatcacheError) as info:
        WriterLock(folder / "s.lock", "the store s.zarr").acquire()
    assert str(info.value) == (
        f"cannot create the store s.zarr in {folder} (Permission denied); make that folder writable or choose "
        "another --out"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(FeatcacheError, match=rf"^cannot create the store in {folder} \(Permission denied\);"):
            WriterLock(folder / "s.lock", "the store").acquire()
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_file_in_the_way_is_one_line(tmp_path, below):
    notes = tmp_path / "notes"
    notes.write_text("mine")
    path = notes / below / "s.lock" if below else notes / "s.lock"
    with pytest.raises(FeatcacheError) as info:
        WriterLock(path, "the store s.zarr").acquire()
    assert str(info.value) == (
        f"cannot create the store s.zarr: {notes} is a file, not a folder; choose another --out or move the file away"
    )
    assert notes.read_text() == "mine"
