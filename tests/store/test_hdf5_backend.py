"""featcache.store.hdf5_backend: Fletcher-32 datasets, the featcache signature in the user block, and the guarded
file that drops every write after the first failed one."""

import errno

import h5py
import numpy as np
import pytest

from featcache.core.errors import OptionError
from featcache.store.errors import NotAStoreError, UnreadableStoreError
from featcache.store.hdf5_backend import H5_SIGNATURE, H5Backend
from featcache.store.integrity import CHECKSUM, METADATA


def test_a_new_file_is_signed_in_its_user_block_and_stays_valid_hdf5(tmp_path):
    path = str(tmp_path / "s.h5")
    backend = H5Backend.create(path)
    backend.write_attrs({"n": 3})
    backend.close()
    with open(path, "rb") as f:
        assert f.read(len(H5_SIGNATURE)) == H5_SIGNATURE
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
    assert H5Backend.open(path, writable=False).read_attrs() == {"n": 3}


def test_sample_datasets_are_chunked_per_sample_with_fletcher32(tmp_path):
    backend = H5Backend.create(str(tmp_path / "s.h5"))
    backend.create_array("features", (5, 4, 8, 2, 2), "float16", block=2, compressor="gzip")
    backend.create_array("masks", (5, 4, 4), "uint8", block=2, compressor="auto")
    backend.create_array("written", (5,), "bool", block=8, compressor="lzf")
    features, masks, written = backend["features"], backend["masks"], backend["written"]
    assert features.chunks == (1, 4, 8, 2, 2) and features.compression == "gzip" and features.fletcher32
    assert masks.compression is None and masks.fletcher32
    assert written.chunks == (5,) and written.compression == "lzf"  # a block never longer than the array
    assert (backend.rows_per_chunk("features"), backend.rows_per_chunk("written")) == (1, 5)
    assert backend.checksum == "fletcher32"


def test_a_zarr_compressor_is_a_usage_error_naming_the_ones_hdf5_takes(tmp_path):
    backend = H5Backend.create(str(tmp_path / "s.h5"))
    with pytest.raises(
        OptionError, match=r"^--compressor zstd is for Zarr stores; an HDF5 store takes gzip, lzf or none$"
    ):
        backend.create_array("images", (3, 4, 4), "uint8", block=2, compressor="zstd")


def test_strings_are_fixed_length_utf8_with_a_checksum(tmp_path):
    backend = H5Backend.create(str(tmp_path / "s.h5"))
    backend.create_array("ids", (3,), str, block=2, compressor="zstd", str_len=len("bé".encode()))
    backend.write_strings("ids", 0, ["a", "bé"])
    backend.write_strings("ids", 2, ["c"])
    assert backend.read_strings("ids") == ["a", "bé", "c"] and backend.read_strings("ids", slice(1, 2)) == ["bé"]
    assert backend["ids"].fletcher32 and backend["ids"].dtype.itemsize == 3 and backend["ids"].chunks == (2,)


def test_the_chunk_index_lists_allocated_chunks_and_removal_zeroes_them(tmp_path):
    backend = H5Backend.create(str(tmp_path / "s.h5"))
    backend.create_array("masks", (5, 4, 4), "uint8", block=2, compressor="auto")
    backend.create_array("written", (5,), "bool", block=2, compressor="auto")
    backend["masks"][1:3] = np.ones((2, 4, 4), np.uint8)
    backend["written"][4:5] = True
    assert backend.stored_chunks(2) == {"masks": (1, {1, 2}), "written": (2, {4})}
    backend.delete_chunks("masks", 1, 2)
    assert not backend["masks"][1].any() and backend["masks"][2].all()
    backend.close()
    assert H5Backend.open(str(tmp_path / "s.h5"), writable=False).nbytes_stored() == (tmp_path / "s.h5").stat().st_size


def test_a_failed_filter_on_a_checksummed_dataset_is_a_checksum_mismatch_and_anything_else_metadata(tmp_path):
    backend = H5Backend.create(str(tmp_path / "s.h5"))
    backend.create_array("masks", (2, 4, 4), "uint8", block=2, compressor="auto")
    backend.file.create_dataset("plain", shape=(2,), dtype="uint8", chunks=(1,))
    assert backend.classify("masks", OSError("Can't read data (filter returned failure)")) == CHECKSUM
    # The read failed before the chunk's bytes (its index): never pinned to chunk data, so never repaired in place.
    assert backend.classify("masks", OSError("Can't read data (wrong B-tree signature)")) == METADATA
    assert backend.classify("plain", OSError("Can't read data (filter returned failure)")) == METADATA


def test_a_file_that_is_not_hdf5_is_not_a_store_and_a_broken_one_of_ours_is_unreadable(tmp_path):
    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"not hdf5 at all" * 100)
    with pytest.raises(NotAStoreError, match=rf"^{foreign} is not a readable HDF5 store \("):
        H5Backend.open(str(foreign), writable=False)
    ours = tmp_path / "ours.h5"
    ours.write_bytes(H5_SIGNATURE + b"\0" * 1000)
    for writable in (False, True):
        with pytest.raises(UnreadableStoreError, match=rf"^the store at {ours} was left unreadable .*--overwrite"):
            H5Backend.open(str(ours), writable=writable)


class FullDisk:
    """A raw file whose writes fail with ENOSPC once ``armed``."""

    def __init__(self, raw) -> None:
        self.raw, self.armed, self.attempts = raw, False, 0

    def write(self, data):
        if self.armed:
            self.attempts += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


def test_after_a_failed_write_the_file_stays_as_the_last_flush_left_it(tmp_path):
    path = str(tmp_path / "s.h5")
    backend = H5Backend.create(path)
    backend.create_array("masks", (4, 4, 4), "uint8", block=2, compressor="auto")
    backend["masks"][0:2] = np.full((2, 4, 4), 7, np.uint8)
    backend.write_attrs({"written": 2})  # flushes
    disk = FullDisk(backend.guard.raw)
    backend.guard.raw = disk
    disk.armed = True
    backend["masks"][2:4] = np.full((2, 4, 4), 9, np.uint8)
    backend.write_attrs({"written": 4})
    with pytest.raises(OSError) as err:
        backend.guard.raise_if_failed()
    assert err.value.errno == errno.ENOSPC and disk.attempts == 1  # later writes never reached the disk
    backend.close()
    reopened = H5Backend.open(path, writable=True)
    assert reopened.read_attrs() == {"written": 2}
    assert (reopened["masks"][0:2] == 7).all() and not reopened["masks"][2:4].any()
    reopened.guard.raise_if_failed()  # a fresh guard: no error carried over
    reopened.close()


def test_a_store_open_for_writing_knows_its_size_on_disk(tmp_path):
    """``nbytes_stored`` takes the file's name from h5py, which for a file written through the guard is the guard
    object's repr, not a path: a created or writable store cannot say its size (no command asks it yet)."""
    path = tmp_path / "s.h5"
    backend = H5Backend.create(str(path))
    backend.create_array("masks", (2, 4, 4), "uint8", block=2, compressor="auto")
    backend.flush()
    assert backend.nbytes_stored() == path.stat().st_size
    backend.close()
    reopened = H5Backend.open(str(path), writable=True)
    assert reopened.nbytes_stored() == path.stat().st_size
    reopened.close()
