"""What a store backend is (`Backend`, the one interface the Zarr and HDF5 modules implement), and the path
rules that pick one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from featcache.core.errors import FeatcacheError
from featcache.store.schema import ArraySpec


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def backend_kind(path: str | Path) -> str:
    """``zarr`` for ``*.zarr`` (or any fsspec URL), ``hdf5`` for ``*.h5``/``*.hdf5``."""
    text = str(path).rstrip("/")
    if text.endswith((".h5", ".hdf5")):
        return "hdf5"
    if text.endswith(".zarr") or is_url(text):
        return "zarr"
    raise FeatcacheError(f"{path}: a store path ends in .zarr (Zarr v3) or .h5 (HDF5)")


#: Zarr stores every chunk, even one equal to the fill value (an all-empty block of masks), so a missing
#: chunk always means a lost one.
WRITE_EMPTY = {"write_empty_chunks": True}


def sample_chunks(shape: tuple, block: int) -> tuple:
    """One chunk per sample (all its views: per-view chunks measured twice as slow to write and 1.6x
    slower to read whole, for 2x faster reads of the identity view alone); ``block`` for 1-D arrays."""
    return (1, *shape[1:]) if len(shape) > 1 else (block,)


class Backend(Protocol):
    """What `featcache.store.FeatureStore` needs of a storage library; `ZarrBackend` and `H5Backend` implement it.

    Arrays are addressed by name (`featcache.store.schema`) and indexed like numpy arrays along their first
    axis (samples). Every chunk carries a checksum; a read that fails it raises, and `classify` says why.
    """

    #: The checksum every chunk carries: ``crc32c`` (Zarr) or ``fletcher32`` (HDF5).
    checksum: str

    @classmethod
    def create(cls, path: str) -> Backend:
        """An empty store at ``path`` (which must not exist)."""
        ...

    @classmethod
    def open(cls, path: str, writable: bool) -> Backend:
        """The store at ``path``, for reading or also for writing."""
        ...

    def create_array(self, name: str, shape: tuple, dtype: Any, *, block: int, compressor: str, str_len: int) -> None:
        """A checksummed array of ``shape`` chunked by sample (`sample_chunks`), stored in blocks of ``block`` rows;
        strings are stored fixed-length (``str_len`` bytes) where the library needs it."""
        ...

    def __getitem__(self, name: str) -> Any:
        """The array ``name``: sliceable and assignable along its first axis."""
        ...

    def read_attrs(self) -> dict: ...

    def write_attrs(self, meta: dict) -> None: ...

    def read_strings(self, name: str, rows: slice = ...) -> list[str]: ...

    def write_strings(self, name: str, start: int, values: Sequence[str]) -> None: ...

    def nbytes_stored(self) -> int:
        """Bytes the store takes on its medium."""
        ...

    def rows_per_chunk(self, name: str) -> int:
        """Rows per stored object (a shard, or a chunk of an unsharded array)."""
        ...

    def stored_chunks(self, block: int) -> dict[str, tuple[int, set[int] | None]]:
        """Per array: rows per stored object and the first rows of the objects present (a listing, no data read;
        None for an array whose chunk index cannot be read)."""
        ...

    def layout_problems(self, name: str, spec: ArraySpec) -> list[str]:
        """How the metadata of array ``name`` differs from ``spec`` (`featcache.store.layout_check`): shape, dtype,
        chunking, codecs and checksum; empty when it does not."""
        ...

    def classify(self, name: str, exc: Exception) -> str:
        """What a failed read of ``name`` means: `featcache.store.integrity.CHECKSUM`, ``UNDECODABLE`` or
        ``METADATA`` (the read failed above the chunk, in its index)."""
        ...

    def settle(self) -> None:
        """Let the library finish what a failed read left running."""
        ...

    def delete_chunks(self, name: str, start: int, stop: int) -> None:
        """Make rows ``[start, stop)`` (whole stored objects) unwritten, so that no read trips over them."""
        ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
