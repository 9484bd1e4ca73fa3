"""featcache.store.hdf5_superblock: the write flags a killed HDF5 writer leaves set, cleared by the writer that takes
over and read past by a reader that writes nothing."""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from featcache.store.hdf5_superblock import (
    SUPERBLOCK_AT,
    ClearedFlagsFile,
    clear_write_flags,
    lookup3,
    write_flags_set,
)


def test_lookup3_is_jenkins_hashlittle():
    """The reference values of lookup3.c's own driver."""
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551
    assert lookup3(b"Four score and seven years ago", 1) == 0xCD628161


KILLED_WRITER = """
import os, signal, sys
import h5py, numpy as np
with h5py.File(sys.argv[1], "w", userblock_size=512, libver=("v110", "v110")) as f:
    f.create_dataset("x", shape=(8, 4), dtype="f4", chunks=(1, 4), fletcher32=True)[:4] = 1
f = h5py.File(sys.argv[1], "r+")
f["x"][4:] = 2
f.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.fixture
def left_open(tmp_path):
    """An HDF5 file (1.10 format, a 512-byte user block) whose writer was SIGKILLed after a flush."""
    path = tmp_path / "killed.h5"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], check=False)
    assert killed.returncode == -signal.SIGKILL
    return path


def test_a_killed_writer_leaves_the_flags_that_hdf5_refuses(left_open):
    assert write_flags_set(str(left_open))
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(left_open, "r")


def test_a_reader_reads_past_the_flags_without_writing(left_open):
    before = left_open.read_bytes()
    with h5py.File(ClearedFlagsFile(str(left_open)), "r") as f:
        assert np.array_equal(f["x"][:], np.repeat([[1.0], [2.0]], 4, axis=0).repeat(4, axis=1))
    assert left_open.read_bytes() == before


def test_the_writer_taking_over_clears_them_in_place(left_open):
    size = os.path.getsize(left_open)
    clear_write_flags(str(left_open))
    assert not write_flags_set(str(left_open)) and os.path.getsize(left_open) == size
    with h5py.File(left_open, "r+") as f:  # HDF5 accepts the superblock: its checksum was recomputed
        f["x"][0] = 3
    clear_write_flags(str(left_open))  # clear already: nothing written
    with open(left_open, "rb") as f:
        f.seek(SUPERBLOCK_AT)
        assert f.read(8) == b"\x89HDF\r\n\x1a\n"


def test_an_older_superblock_has_no_flags(tmp_path):
    path = tmp_path / "old.h5"
    with h5py.File(path, "w", userblock_size=512) as f:  # the earliest format: superblock version 0
        f["x"] = np.zeros(3)
    assert not write_flags_set(str(path))
    clear_write_flags(str(path))
    with h5py.File(path, "r") as f:
        assert f["x"].shape == (3,)
