import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.models import EncoderRecord, WeightsSource
from featcache.store import FeatureStore
from featcache.store.backend import backend_kind
from featcache.store.errors import DamagedChunksError
from featcache.store.schema import FORMAT_VERSION, ExtractionRecord, describe_differences
from tests.helpers import fill_store as fill
from tests.helpers import flip_chunk_byte, make_store, tiny_identity

ENCODER = tiny_identity().encoder


def complete(store):
    store.mark_complete(ExtractionRecord())


@pytest.mark.parametrize("dtype", ["float16", "float32", "bfloat16"])
def test_round_trip_on_both_backends(tmp_path, store_suffix, dtype):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path, dtype) as store:
        feats, images, masks = fill(store)
        complete(store)
    with FeatureStore.open(path) as store:
        assert store.ids == [f"ISIC_{i:07d}" for i in range(5)]
        assert store.indices("train").tolist() == [0, 1, 2] and store.indices("test").tolist() == [4]
        assert store.view_names == ("identity", "h", "v", "hv") and store.has_flip_views
        torch_dtype = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
        got = store.features([4, 0, 2])
        assert got.dtype == torch_dtype
        torch.testing.assert_close(got, feats[[4, 0, 2]].to(torch_dtype))
        assert np.array_equal(store.images(np.array([3, 1])).numpy(), images[[3, 1]])
        split = store.load_split("train", with_images=True)
        assert split.ids == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
        assert torch.equal(split.masks, torch.from_numpy(masks[:3]))
        assert split.orig_hw.tolist() == [[0, 1], [2, 3], [4, 5]]
        assert store.written().all() and store.nbytes_stored() > 0
        for rows in ([4, 0, 2], [0, 4]):  # the identity view alone, by a contiguous and by a sparse read
            torch.testing.assert_close(store.features(rows, identity_only=True), feats[rows][:, :1].to(torch_dtype))


def test_incomplete_store_is_refused_with_the_fix(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        store.write_block(
            0, np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8), features=torch.zeros(2, 4, 8, 2, 2)
        )
        with pytest.raises(FeatcacheError, match="3 samples were not written"):
            complete(store)
    with pytest.raises(FeatcacheError, match=r"incomplete \(2/5 samples written.*run the same `featcache extract"):
        FeatureStore.open(path)
    with FeatureStore.open(path, allow_incomplete=True) as store:
        assert store.written().tolist() == [True, True, False, False, False]


def test_writes_must_be_shard_aligned(tmp_path):
    with make_store(tmp_path / "s.zarr") as store, pytest.raises(ValueError, match="shard-aligned"):
        store.write_block(
            1, np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8), features=torch.zeros(2, 4, 8, 2, 2)
        )


def test_store_of_another_encoder_is_refused_naming_both(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill(store)
        complete(store)
    other = EncoderRecord(
        arch="vit_b_16",
        config={"num_layers": 12},
        normalisation={},
        source=WeightsSource("imagenet", file="vit_b_16-c867db91.pth"),
        weights_sha256="b" * 64,
    )
    with pytest.raises(FeatcacheError) as err:
        FeatureStore.open(path, encoder=other)
    assert "vit_micro (random: random seed 0" in str(err.value) and "vit_b_16 (imagenet" in str(err.value)
    FeatureStore.open(path, encoder=ENCODER).close()


def test_not_a_store(tmp_path):
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(FeatcacheError, match="not a featcache store"):
        FeatureStore.open(tmp_path / "plain.zarr")
    (tmp_path / "junk.h5").write_text("hello")
    with pytest.raises(FeatcacheError, match="not a readable HDF5 store"):
        FeatureStore.open(tmp_path / "junk.h5")
    with pytest.raises(FeatcacheError, match="no store at"):
        FeatureStore.open(tmp_path / "missing.zarr")
    with pytest.raises(FeatcacheError, match=r"ends in .zarr"):
        backend_kind(tmp_path / "store.npz")


def test_memory_url_store():
    path = "memory://featcache-test/s.zarr"
    with make_store(path) as store:
        feats, _, _ = fill(store)
        complete(store)
    with FeatureStore.open(path) as store:
        torch.testing.assert_close(store.features([1]), feats[[1]].half())


def test_describe_differences_names_the_entry():
    new = tiny_identity()
    new.views, new.encoder.weights_sha256 = "identity", "c" * 64
    lines = describe_differences(tiny_identity(), new)
    assert "views: flips -> identity" in lines
    assert any(line.startswith("encoder.weights_sha256: aaaaaaaaaaaa… -> cccccccccccc…") for line in lines)


def test_every_chunk_carries_a_checksum(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill(store)
        complete(store)
        assert store.record.format_version == FORMAT_VERSION
        if store_suffix == ".zarr":
            assert store.record.checksum == "crc32c"
            for name in ("ids", "split", "orig_hw", "images", "masks", "features", "written"):
                codecs = store.backend[name].metadata.codecs
                if name in ("ids", "split", "written"):
                    assert codecs[-1].to_dict()["name"] == "crc32c", name
                else:  # sharded: each inner chunk and the shard index
                    assert codecs[0].codecs[-1].to_dict()["name"] == "crc32c", name
                    assert codecs[0].index_codecs[-1].to_dict()["name"] == "crc32c", name
        else:
            assert store.record.checksum == "fletcher32"
            assert all(store.backend[name].fletcher32 for name in store.backend.file)


@pytest.mark.parametrize("array", ["features", "masks", "images", "written", "ids", "split", "orig_hw"])
def test_a_flipped_bit_fails_the_read_naming_rows_and_fix(tmp_path, store_suffix, array):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill(store)
        complete(store)
    flip_chunk_byte(path, array, 2)
    with FeatureStore.open(path) as store:
        reads = {"ids": lambda: store.ids, "split": lambda: store.indices("train"), "written": store.written}
        with pytest.raises(DamagedChunksError) as err:
            reads.get(array, lambda: store.read(array, [4, 2, 0]))()
    per_row = store_suffix == ".h5" and array not in ("ids", "split", "written")  # one HDF5 chunk per sample
    assert f"{path} is damaged: {array} {'row 2' if per_row else 'rows 2-3'} (checksum mismatch)" in str(err.value)
    fix = "--overwrite" if array in ("ids", "split", "orig_hw") else f"featcache verify {path} --repair"
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_a_missing_chunk_is_found_at_open(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    zeros = np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8), torch.zeros(2, 4, 8, 2, 2)
    with make_store(path) as store:
        store.write_block(
            0, zeros[0], zeros[1], features=zeros[2]
        )  # all-zero blocks are stored too: absent always means lost
        store.write_block(4, zeros[0][:1], zeros[1][:1], features=zeros[2][:1])
        assert store.missing_chunks() == [] and store.damaged_blocks() == []  # rows 2-3 unwritten: expected
        store.backend["written"][2:4] = True  # flags that vouch for chunks that are not there
        with pytest.raises(DamagedChunksError, match=r"features rows 2-3 \(missing\), images rows 2-3"):
            complete(store)
        assert store.damaged_blocks() == [2]
        store.record.complete = True
        store.save_record()
    with pytest.raises(
        DamagedChunksError, match=rf"{path} is damaged: .*masks rows 2-3 \(missing\); run `featcache verify"
    ):
        FeatureStore.open(path)


def test_missing_chunks_are_listed_behind_an_fsspec_url():
    import fsspec

    path = "memory://featcache-holes/s.zarr"
    with make_store(path) as store:
        fill(store)
        complete(store)
    fsspec.filesystem("memory").rm("/featcache-holes/s.zarr/ids/c/0")
    with pytest.raises(DamagedChunksError, match=r"ids rows 0-1 \(missing\); ids are written once .*--overwrite"):
        FeatureStore.open(path)


def make_format1_store(path, n=5, shard_size=2):
    """A store laid out as format 1 wrote it: no checksums, HDF5 strings variable-length and contiguous."""
    ids, splits = [f"ISIC_{i:07d}" for i in range(n)], ["train"] * 3 + ["val"] * (n - 4) + ["test"]
    meta = {
        **tiny_identity().to_json(),
        "format_version": 1,
        "featcache_version": "0.1.0",
        "complete": False,
        "backend": "zarr" if str(path).endswith(".zarr") else "hdf5",
        "n": n,
        "width": 8,
        "grid": [2, 2],
        "shard_size": shard_size,
        "view_names": ["identity", "h", "v", "hv"],
    }
    shapes = {
        "orig_hw": ((n, 2), "int32"),
        "written": ((n,), "bool"),
        "images": ((n, 3, 32, 32), "uint8"),
        "masks": ((n, 32, 32), "uint8"),
        "features": ((n, 4, 8, 2, 2), "float16"),
    }
    if meta["backend"] == "zarr":
        import zarr

        group = zarr.open_group(path, mode="w", zarr_format=3)
        group.attrs["featcache"] = meta
        for name, values in (("ids", ids), ("split", splits)):
            group.create_array(name, shape=(n,), dtype=str, chunks=(shard_size,))[:] = np.asarray(values)
        for name, (shape, dtype) in shapes.items():
            sharded = len(shape) > 1
            group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=(1, *shape[1:]) if sharded else (shard_size,),
                shards=(shard_size, *shape[1:]) if sharded else None,
                fill_value=0,
            )
        group["orig_hw"][:] = np.arange(2 * n).reshape(n, 2)
    else:
        import json

        import h5py

        with h5py.File(path, "w") as f:
            f.attrs["featcache"] = json.dumps(meta)
            for name, values in (("ids", ids), ("split", splits)):
                f.create_dataset(name, shape=(n,), dtype=h5py.string_dtype())[:] = np.asarray(values, dtype=object)
            for name, (shape, dtype) in shapes.items():
                chunks = (1, *shape[1:]) if len(shape) > 1 else (shard_size,)
                f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=0)
            f["orig_hw"][:] = np.arange(2 * n).reshape(n, 2)


def test_a_format1_store_without_checksums_still_opens_and_resumes(tmp_path, store_suffix):
    from featcache.store.verify import verify_store

    path = tmp_path / f"old{store_suffix}"
    make_format1_store(path)
    with FeatureStore.open(path, writable=True, allow_incomplete=True) as store:
        feats, _, masks = fill(store)
        complete(store)
    with FeatureStore.open(path) as store:
        assert store.record.format_version == 1 and store.ids[4] == "ISIC_0000004"
        torch.testing.assert_close(store.features([3, 1]), feats[[3, 1]].half())
        assert np.array_equal(store.masks([0, 4]).numpy(), masks[[0, 4]]) and store.orig_hw([2]).tolist() == [[4, 5]]
    report = verify_store(path)
    assert report.clean and not report.checksummed
