"""featcache.store.zarr_backend: sharded, crc32c-checksummed arrays, listing of stored chunks, chunk removal."""

import asyncio

import numpy as np
import pytest

from featcache.core.errors import OptionError
from featcache.store import FeatureStore
from featcache.store.errors import DamagedChunksError
from featcache.store.integrity import CHECKSUM, UNDECODABLE
from featcache.store.schema import ExtractionRecord
from featcache.store.zarr_backend import ZarrBackend
from tests.helpers import fill_store, flip_chunk_byte, make_store


def codec_names(array) -> tuple[list[str], list[str]]:
    """The codec names of a sharded array's inner chunks and of its shard index."""
    (sharding,) = array.metadata.codecs
    return [c.to_dict()["name"] for c in sharding.codecs], [c.to_dict()["name"] for c in sharding.index_codecs]


@pytest.mark.parametrize(("compressor", "blosc"), [("auto", "lz4"), ("lz4", "lz4"), ("zstd", "zstd")])
def test_sample_arrays_are_sharded_by_block_and_end_in_crc32c(tmp_path, compressor, blosc):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    backend.create_array("features", (5, 4, 8, 2, 2), "float16", block=2, compressor=compressor)
    array = backend["features"]
    assert array.chunks == (1, 4, 8, 2, 2) and array.shards == (2, 4, 8, 2, 2)
    inner, index = codec_names(array)
    assert inner[-2:] == ["blosc", "crc32c"] and index[-1] == "crc32c"
    assert array.metadata.codecs[0].codecs[-2].cname.value == blosc
    assert backend.rows_per_chunk("features") == 2 and backend.checksum == "crc32c"


def test_without_compression_only_the_checksum_is_left(tmp_path):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    backend.create_array("masks", (3, 4, 4), "uint8", block=2, compressor="none")
    backend.create_array("images", (3, 4, 4), "uint8", block=2, compressor="gzip")
    assert codec_names(backend["masks"])[0] == ["bytes", "crc32c"]
    assert codec_names(backend["images"])[0] == ["bytes", "gzip", "crc32c"]


def test_an_hdf5_compressor_is_a_usage_error_naming_the_ones_zarr_takes(tmp_path):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    with pytest.raises(OptionError, match=r"^--compressor lzf is for HDF5 stores; a Zarr store takes zstd, lz4, gzip"):
        backend.create_array("images", (3, 4, 4), "uint8", block=2, compressor="lzf")


def test_strings_and_attributes_round_trip(tmp_path):
    path = str(tmp_path / "s.zarr")
    backend = ZarrBackend.create(path)
    backend.create_array("ids", (5,), str, block=2, compressor="auto")
    backend.write_strings("ids", 0, ["a", "bé", "c"])
    backend.write_strings("ids", 3, ["d", "e"])
    backend.write_attrs({"n": 5, "views": ["identity"]})
    reopened = ZarrBackend.open(path, writable=False)
    assert reopened.read_strings("ids") == ["a", "bé", "c", "d", "e"]
    assert reopened.read_strings("ids", slice(1, 3)) == ["bé", "c"]
    assert reopened.read_attrs() == {"n": 5, "views": ["identity"]}
    assert reopened["ids"].chunks == (2,) and reopened.rows_per_chunk("ids") == 2
    assert reopened.nbytes_stored() > 0


def test_the_listing_shows_every_written_block_even_all_zero_and_removal_clears_it(tmp_path):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    backend.create_array("masks", (5, 4, 4), "uint8", block=2, compressor="auto")
    backend.create_array("written", (5,), "bool", block=2, compressor="auto")
    backend["masks"][0:2] = np.zeros((2, 4, 4), np.uint8)  # the fill value, stored all the same
    backend["masks"][4:5] = np.ones((1, 4, 4), np.uint8)
    backend["written"][0:2] = True
    assert backend.stored_chunks(2) == {"masks": (2, {0, 4}), "written": (2, {0})}
    backend.delete_chunks("masks", 4, 5)
    backend.delete_chunks("written", 1, 2)  # rows of the block: the whole block goes
    assert backend.stored_chunks(2) == {"masks": (2, {0})}
    assert not backend["masks"][4:5].any() and not backend["written"][:].any()


def test_a_temporary_file_left_by_a_killed_write_is_not_a_chunk(tmp_path):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    backend.create_array("masks", (4, 4, 4), "uint8", block=2, compressor="auto")
    backend["masks"][0:2] = np.ones((2, 4, 4), np.uint8)
    (tmp_path / "s.zarr" / "masks" / "c" / "1.fdfd5252b9b24d198a3e4fa8daaced1f.partial").write_bytes(b"half")
    assert backend.stored_chunks(2) == {"masks": (2, {0})}


def test_the_listing_behind_an_fsspec_url():
    backend = ZarrBackend.create("memory://featcache-zarr-backend/s.zarr")
    backend.create_array("orig_hw", (4, 2), "int32", block=2, compressor="auto")
    backend["orig_hw"][2:4] = np.arange(4).reshape(2, 2)
    assert backend.stored_chunks(2) == {"orig_hw": (2, {2})}


def test_a_failed_read_is_a_checksum_mismatch_only_when_it_says_so(tmp_path):
    backend = ZarrBackend.create(str(tmp_path / "s.zarr"))
    assert backend.classify("features", RuntimeError("Stored and computed checksum do not match")) == CHECKSUM
    assert backend.classify("features", ValueError("blosc decompression failed")) == UNDECODABLE


def test_a_failed_zarr_read_leaves_no_task_running(tmp_path):
    """Sibling decodes left running would fail noisily at exit (asyncio tracebacks after the one-line error)."""
    from zarr.core.sync import _get_loop

    path = tmp_path / "s.zarr"
    with make_store(path, n=64, shard_size=32) as store:
        fill_store(store)
        store.mark_complete(ExtractionRecord())
    flip_chunk_byte(path, "features", 40)
    with FeatureStore.open(path) as store, pytest.raises(DamagedChunksError, match="features rows 32-63"):
        store.read("features")
    assert not [task for task in asyncio.all_tasks(_get_loop()) if not task.done()]
