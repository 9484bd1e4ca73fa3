"""featcache.store.location: which backend opens a path, whether something is there, deleting a store."""

import fsspec

from featcache.store.hdf5_backend import H5Backend
from featcache.store.location import BACKENDS, remove_store, store_exists
from featcache.store.zarr_backend import ZarrBackend


def test_each_backend_kind_has_its_class():
    assert BACKENDS == {"zarr": ZarrBackend, "hdf5": H5Backend}


def test_a_local_path_exists_as_a_file_or_a_folder_of_any_content(tmp_path):
    assert not store_exists(tmp_path / "s.zarr") and not store_exists(str(tmp_path / "s.h5"))
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.h5").write_bytes(b"x")
    assert store_exists(tmp_path / "s.zarr") and store_exists(str(tmp_path / "s.h5"))


def test_a_url_exists_only_where_a_zarr_group_opens():
    url = "memory://featcache-location/s.zarr"
    assert not store_exists(url)
    fsspec.filesystem("memory").pipe("/featcache-location/s.zarr/stray.txt", b"not zarr")
    assert not store_exists(url)
    ZarrBackend.create("memory://featcache-location/t.zarr")
    assert store_exists("memory://featcache-location/t.zarr")


def test_removal_deletes_a_folder_or_a_file_and_leaves_a_missing_path_alone(tmp_path):
    folder = tmp_path / "s.zarr"
    (folder / "features" / "c").mkdir(parents=True)
    (folder / "features" / "c" / "0").write_bytes(b"chunk")
    file = tmp_path / "s.h5"
    file.write_bytes(b"x")
    remove_store(folder)
    remove_store(str(file))
    remove_store(tmp_path / "gone.zarr")
    assert sorted(tmp_path.iterdir()) == []


def test_removal_behind_a_url_takes_the_whole_tree_and_nothing_beside_it():
    fs = fsspec.filesystem("memory")
    ZarrBackend.create("memory://featcache-remove/s.zarr").create_array(
        "written", (2,), "bool", block=2, compressor="auto"
    )
    fs.pipe("/featcache-remove/other.txt", b"kept")
    remove_store("memory://featcache-remove/s.zarr")
    remove_store("memory://featcache-remove/never.zarr")
    assert not fs.exists("/featcache-remove/s.zarr") and fs.cat("/featcache-remove/other.txt") == b"kept"
