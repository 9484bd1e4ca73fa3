"""featcache.store.live_lock: a reader of a store that a live process writes is told so ("being written by pid N on
HOST since T; wait for it"), not that the store was interrupted; a stale lock is no reason to wait."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from featcache.core.errors import FeatcacheError
from featcache.store import FeatureStore
from featcache.store.live_lock import lock_path, refuse_if_being_written
from featcache.store.verify import verify_store

HOST = socket.gethostname()


@pytest.fixture
def store(clean_stores, tmp_path, store_suffix):
    """A copy of the clean store of each backend, made incomplete as an extraction under way leaves it."""
    source = clean_stores[store_suffix]
    path = tmp_path / source.name
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, path)
    with FeatureStore.open(path, writable=True) as opened:
        opened.mark_incomplete()
    return path


def hold(path, pid: int) -> None:
    lock_path(path).write_text(json.dumps({"host": HOST, "pid": pid, "since": "2026-05-01T10:00:00"}))


def test_a_live_writer_is_named_to_every_reader(store):
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold(store, writer.pid)
        expected = (
            f"{store} is being written by pid {writer.pid} on {HOST} since 2026-05-01T10:00:00; wait for it, or "
            f"delete {lock_path(store)} if that run is gone"
        )
        for read in (
            lambda: FeatureStore.open(store),
            lambda: FeatureStore.open(store, allow_incomplete=True),
            lambda: verify_store(store),
            lambda: verify_store(store, repair=True),  # a repair takes the lock as extract does
        ):
            with pytest.raises(FeatcacheError) as info:
                read()
            assert str(info.value) == expected
    finally:
        writer.kill()
        writer.wait()


def test_a_stale_lock_reads_as_the_interruption_it_is(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hold(store, dead.pid)
    refuse_if_being_written(store)
    with pytest.raises(FeatcacheError, match=r"incomplete \(24/24 samples written; the extraction was interrupted\)"):
        FeatureStore.open(store)
    assert lock_path(store).exists()  # a reader leaves it to the writer that recovers it


def test_the_lock_holder_reads_its_own_store(store):
    hold(store, os.getpid())
    with FeatureStore.open(store, allow_incomplete=True) as opened:
        assert opened.n == 24


def test_the_lock_lies_beside_a_local_store_and_a_url_store_has_none():
    assert lock_path("out/s.zarr") == Path("out/s.zarr.lock") and lock_path("/a/s.h5") == Path("/a/s.h5.lock")
    assert lock_path("memory://x/s.zarr") is None
    refuse_if_being_written("memory://x/s.zarr")
