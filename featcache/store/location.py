"""Where a store is: which backend opens a path, whether something is there, and deleting a store."""

from __future__ import annotations

import shutil
from pathlib import Path

from featcache.store.backend import is_url
from featcache.store.hdf5_backend import H5Backend
from featcache.store.zarr_backend import ZarrBackend

BACKENDS = {"zarr": ZarrBackend, "hdf5": H5Backend}


def store_exists(path: str | Path) -> bool:
    """Whether something is at ``path`` (a local path; URLs are checked by opening them)."""
    if is_url(path):
        try:
            ZarrBackend.open(str(path), writable=False)
        except Exception:
            return False
        return True
    return Path(path).exists()


def remove_store(path: str | Path) -> None:
    """Delete a store (only one that looks like a store: a featcache Zarr directory or HDF5 file)."""
    if is_url(path):
        import fsspec

        fs, root = fsspec.core.url_to_fs(str(path))
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
