"""featcache.store.layout_check: the arrays a provenance implies, and every array's metadata checked against them on
open (shape, dtype, chunking, codecs and checksum), named in one line with the fix."""

import json
import re
import shutil

import h5py
import pytest

from featcache.store import FeatureStore
from featcache.store.errors import MalformedStoreError
from featcache.store.integrity import METADATA
from featcache.store.layout_check import array_specs, layout_damages
from tests.helpers import STORE_ARRAYS
from tests.store.test_feature_store import complete, fill, make_store


@pytest.fixture
def store_path(tmp_path, store_suffix):
    """A complete 5-sample store (blocks of 2, 32 px, 4 views, 8 channels on a 2 x 2 grid), closed."""
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill(store)
        complete(store)
    return path


def test_the_table_is_what_create_makes(store_path):
    with FeatureStore.open(store_path) as store:
        specs = array_specs(store.record)
        assert list(specs) == list(STORE_ARRAYS[:3]) + ["written", "images", "masks", "features"]
        assert specs["features"].shape == (5, 4, 8, 2, 2) and specs["features"].dtype == "float16"
        assert specs["images"].shape == (5, 3, 32, 32) and specs["images"].chunks == (1, 3, 32, 32)
        assert specs["ids"].chunks == (2,) and all(spec.checksum for spec in specs.values())
        assert layout_damages(store.backend, store.record) == [] and store.layout == []


def edit_zarr(path, array, change) -> None:
    meta_path = path / array / "zarr.json"
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta))


def sharding(meta) -> dict:
    return meta["codecs"][0]["configuration"]


ZARR_CHANGES = {
    "shape": ("features", lambda m: m.update(shape=[4, *m["shape"][1:]]), "shape [4, 4, 8, 2, 2], the provenance"),
    "dtype": ("features", lambda m: m.update(data_type="float32"), "dtype float32, the provenance implies float16"),
    "chunks": ("masks", lambda m: sharding(m).update(chunk_shape=[2, 32, 32]), "chunks [2, 32, 32]"),
    "shards": ("images", lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[1, 3, 32, 32]), "shards"),
    "fill": ("orig_hw", lambda m: m.update(fill_value=7), "fill value 7"),
    "keys": ("features", lambda m: m["chunk_key_encoding"]["configuration"].update(separator="."), "chunk keys"),
    "big-endian": (
        "features",
        lambda m: sharding(m)["codecs"][0]["configuration"].update(endian="big"),
        "the bytes serializer first, little-endian",
    ),
    "no checksum": ("features", lambda m: sharding(m)["codecs"].pop(), "crc32c last"),
    "index without checksum": ("masks", lambda m: sharding(m)["index_codecs"].pop(), "shard index codecs"),
    "1-D without checksum": ("written", lambda m: m["codecs"].pop(), "crc32c last"),
    "transposed": (
        "features",
        lambda m: sharding(m)["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [0, 1, 2, 4, 3]}}),
        "the bytes serializer first",
    ),
}


@pytest.mark.parametrize("change", list(ZARR_CHANGES), ids=list(ZARR_CHANGES))
def test_a_changed_zarr_json_is_refused_naming_the_array(tmp_path, change):
    """Each of these reads "successfully" into wrong numbers, or fails far from the store, unless checked."""
    path = tmp_path / "s.zarr"
    with make_store(path) as store:
        fill(store)
        complete(store)
    array, edit, named = ZARR_CHANGES[change]
    edit_zarr(path, array, edit)
    with pytest.raises(MalformedStoreError) as info:
        FeatureStore.open(path, allow_incomplete=True)
    message = str(info.value)
    assert message.startswith(f"{path} is damaged: {array} metadata (") and named in message, message
    assert message.endswith(f"rewrite the store with `featcache extract ... --out {path} --overwrite`")
    with FeatureStore.open(path, allow_incomplete=True, check_layout=False) as store:
        assert [(d.array, d.what) for d in store.layout] == [(array, METADATA)]


def recreate(path, name, **changes) -> None:
    """Replace dataset ``name`` of an HDF5 store by one made with ``changes`` to how `FeatureStore.create` made it."""
    with h5py.File(path, "r+") as f:
        old = f[name]
        data, chunks, dtype = old[:], old.chunks, old.dtype
        del f[name]
        options = {"shape": data.shape, "dtype": dtype, "chunks": chunks, "fletcher32": True, **changes}
        new = f.create_dataset(name, **options)
        new[:] = data[tuple(slice(0, s) for s in new.shape)].astype(new.dtype)


H5_CHANGES = {
    "shape": ("features", {"shape": (4, 4, 8, 2, 2), "chunks": (1, 4, 8, 2, 2)}, "shape [4, 4, 8, 2, 2]"),
    "dtype": ("features", {"dtype": "float32"}, "dtype <f4"),
    "big-endian": ("orig_hw", {"dtype": ">i4"}, "dtype >i4"),
    "chunks": ("masks", {"chunks": (2, 32, 32)}, "chunks [2, 32, 32]"),
    "no checksum": ("images", {"fletcher32": False}, "Fletcher-32 False"),
    "shuffled": ("features", {"shuffle": True}, "filters 2"),
    "fill value": ("masks", {"fillvalue": 7}, "fill value 7"),
}


@pytest.mark.parametrize("change", list(H5_CHANGES), ids=list(H5_CHANGES))
def test_a_changed_hdf5_dataset_is_refused_naming_the_array(tmp_path, change):
    path = tmp_path / "s.h5"
    with make_store(path) as store:
        fill(store)
        complete(store)
    array, changes, named = H5_CHANGES[change]
    recreate(path, array, **changes)
    with pytest.raises(MalformedStoreError) as info:
        FeatureStore.open(path)
    assert str(info.value).startswith(f"{path} is damaged: {array} metadata (") and named in str(info.value)
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)


def test_a_missing_array_or_a_group_in_its_place(store_path):
    if store_path.suffix == ".h5":
        with h5py.File(store_path, "r+") as f:
            del f["masks"]
            f.create_group("masks")
        expected = "masks metadata (it is not a dataset)"
    else:
        shutil.rmtree(store_path / "masks")
        expected = "masks metadata (the array is missing)"
    with pytest.raises(MalformedStoreError, match=rf"is damaged: {re.escape(expected)}; rewrite the store with `"):
        FeatureStore.open(store_path)


def test_float32_and_bfloat16_stores_are_laid_out_as_their_record_says(tmp_path, store_suffix):
    for dtype in ("float32", "bfloat16"):  # bfloat16: its uint16 bit patterns
        path = tmp_path / f"{dtype}{store_suffix}"
        with make_store(path, dtype) as store:
            fill(store)
            complete(store)
        with FeatureStore.open(path) as store:
            assert store.layout == []
