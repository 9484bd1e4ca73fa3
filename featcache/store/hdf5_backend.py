"""The HDF5 backend: Fletcher-32 on every dataset, HDF5's own checksums on its metadata (the 1.10 file format: chunk
index, object headers, superblock), a featcache signature in the user block, and writes through a file object that
stops at the first failed write."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from featcache.core.errors import OptionError
from featcache.store.backend import sample_chunks
from featcache.store.errors import NOT_A_STORE_FIX, NotAStoreError, UnreadableStoreError
from featcache.store.hdf5_superblock import ClearedFlagsFile, clear_write_flags, write_flags_set
from featcache.store.integrity import CHECKSUM, METADATA
from featcache.store.schema import ATTR, ArraySpec

#: Written into the HDF5 user block of every store (HDF5 never touches it), so a store that an
#: interrupted write left unreadable is still known as ours, and ``extract --overwrite`` may replace it.
H5_SIGNATURE = b"featcache store (HDF5)\n"
H5_USERBLOCK = 512
#: The HDF5 file format of new stores: 1.10's, whose chunk indexes (fixed arrays), object headers and superblock carry
#: checksums, so a damaged index fails its read instead of pointing a repair at another chunk's bytes.
H5_LIBVER = ("v110", "v110")


class _GuardedFile(io.RawIOBase):
    """The file under a writable HDF5 store (h5py's ``fileobj`` driver): after the first failed write
    (full disk, ``ulimit -f``) it keeps ``error`` and drops every later write and resize.

    HDF5 never sees the failure: after one, HDF5 2.0 fails to close the file and crashes at exit
    (a segfault in its atexit clean-up), and its flush writes the superblock with the new end of file
    before extending the file, leaving it unreadable. Dropping the writes instead leaves the file as
    the last flush made it (each block is flushed before its ``written`` flags), so it resumes.
    """

    def __init__(self, path: str, mode: str) -> None:
        super().__init__()
        self.raw = open(path, mode, buffering=0)
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if self.error is None:
            try:
                written = self.raw.write(data)
                if written == size:
                    return written
                self.error = OSError(errno.EFBIG, os.strerror(errno.EFBIG))  # a short write: the file hit its limit
            except OSError as exc:
                self.error = exc
        return size

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.raw.tell() if size is None else size

    def flush(self) -> None:
        pass  # unbuffered: every write already reached the OS, as with HDF5's own driver

    def close(self) -> None:
        self.raw.close()
        super().close()

    def raise_if_failed(self) -> None:
        """Raise the first write error (an `OSError`), if any write failed."""
        if self.error is not None:
            raise self.error


def _signed(path: str) -> bool:
    """Whether the file at ``path`` starts with the featcache HDF5 signature."""
    try:
        with open(path, "rb") as f:
            return f.read(len(H5_SIGNATURE)) == H5_SIGNATURE
    except OSError:
        return False


class H5Backend:
    checksum = "fletcher32"

    def __init__(self, file) -> None:
        self.file = file

    @classmethod
    def create(cls, path: str) -> H5Backend:
        """A new file with the featcache signature in its user block, written through a `_GuardedFile`."""
        import h5py

        guard = _GuardedFile(path, "w+b")
        backend = cls(h5py.File(guard, "w", userblock_size=H5_USERBLOCK, libver=H5_LIBVER))
        backend.path = path
        guard.seek(0)
        guard.write(H5_SIGNATURE)
        backend.guard = guard
        guard.raise_if_failed()
        return backend

    @classmethod
    def open(cls, path: str, writable: bool) -> H5Backend:
        """Open for reading (HDF5's own driver) or for writing (through a `_GuardedFile`).

        A file still marked open for writing by a writer that is gone (`featcache.store.hdf5_superblock`; the
        caller has checked that none runs) is taken over: a writer clears the marks, a reader reads past them.
        """
        import h5py

        guard = None
        try:
            left_open = write_flags_set(path)
            if writable and left_open:
                clear_write_flags(path)
            guard = _GuardedFile(path, "r+b") if writable else ClearedFlagsFile(path) if left_open else None
            backend = cls(h5py.File(guard if guard is not None else path, "r+" if writable else "r"))
        except (OSError, RuntimeError, ValueError) as exc:
            if guard is not None:
                guard.close()
            if _signed(path):
                raise UnreadableStoreError(
                    f"the store at {path} was left unreadable by an interrupted write, or its HDF5 metadata is "
                    f"damaged ({exc}); pass --overwrite to `featcache extract` to start it again"
                ) from exc
            raise NotAStoreError(f"{path} is not a readable HDF5 store ({exc}); {NOT_A_STORE_FIX}") from exc
        backend.guard, backend.path = guard, path
        return backend

    def create_array(self, name: str, shape: tuple, dtype, *, block: int, compressor: str, str_len: int = 0) -> None:
        """Every chunk carries a Fletcher-32 checksum; strings are fixed-length (UTF-8, ``str_len`` bytes), which
        HDF5 can checksum, unlike variable-length ones."""
        import h5py

        if dtype is str:
            self.file.create_dataset(
                name,
                shape=shape,
                dtype=h5py.string_dtype("utf-8", max(str_len, 1)),
                chunks=(min(block, shape[0]),),
                fletcher32=True,
            )
            return
        if compressor not in ("auto", "none", "gzip", "lzf"):
            raise OptionError(f"--compressor {compressor} is for Zarr stores; an HDF5 store takes gzip, lzf or none")
        chunks = sample_chunks(shape, min(block, shape[0]))
        options = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"}}
        self.file.create_dataset(
            name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=0, fletcher32=True, **options.get(compressor, {})
        )

    def layout_problems(self, name: str, spec: ArraySpec) -> list[str]:
        """How the dataset ``name`` differs from ``spec`` (`featcache.store.layout_check`), first difference first:
        shape, dtype (little-endian; text: fixed-length UTF-8 from format 2 on), chunks, data in this file, the
        filters (Fletcher-32 from format 2 on, at most gzip or lzf besides) and the fill value."""
        import h5py

        dataset = self.file.get(name)
        if not isinstance(dataset, h5py.Dataset):
            return ["the array is missing" if dataset is None else "it is not a dataset"]
        text = spec.dtype is str
        if text:
            kind = h5py.check_string_dtype(dataset.dtype)
            fixed = kind is not None and kind.length is not None and kind.encoding == "utf-8"
            dtype_ok = fixed or (kind is not None and not spec.checksum)  # format 1: variable-length strings
        else:
            dtype_ok = dataset.dtype.str == np.dtype(spec.dtype).str
        chunks = (1, *spec.shape[1:]) if len(spec.shape) > 1 else (min(spec.block, spec.shape[0]),)
        contiguous_ok = text and not spec.checksum and dataset.chunks is None  # format 1 strings
        plist = dataset.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        compressed = dataset.compression in ("gzip", "lzf")
        checks = (
            ("shape", list(dataset.shape), list(spec.shape)),
            ("dtype", dataset.dtype.str if not dtype_ok else "ok", "ok"),
            ("chunks", dataset.chunks and list(dataset.chunks), list(chunks) if not contiguous_ok else None),
            ("external or virtual data", dataset.is_virtual or plist.get_external_count() > 0, False),
            ("Fletcher-32", dataset.fletcher32, spec.checksum),
            ("filters", len(filters), int(compressed) + int(spec.checksum)),
            ("fill value", 0 if text else dataset.fillvalue, 0),
        )
        return [f"{what} {found}, the provenance implies {wanted}" for what, found, wanted in checks if found != wanted]

    def __getitem__(self, name: str):
        return self.file[name]

    def read_attrs(self) -> dict:
        raw = self.file.attrs.get(ATTR)
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            if _signed(self.path):
                raise  # ours, damaged: the caller says so
            raise NotAStoreError(
                f"{self.path} is not a featcache store (its {ATTR} attribute is not JSON); {NOT_A_STORE_FIX}"
            ) from exc

    def write_attrs(self, meta: dict) -> None:
        self.file.attrs[ATTR] = json.dumps(meta)
        self.file.flush()

    def read_strings(self, name: str, rows: slice = slice(None)) -> list[str]:
        return list(self.file[name].asstr()[rows])

    def write_strings(self, name: str, start: int, values: Sequence[str]) -> None:
        self.file[name][start : start + len(values)] = np.asarray(list(values), dtype=object)

    def nbytes_stored(self) -> int:
        return Path(self.path).stat().st_size

    def stored_chunks(self, block: int) -> dict[str, tuple[int, set[int] | None]]:
        """Per dataset: rows per chunk (``block`` or fewer), and the first rows of the chunks allocated (from the
        chunk index, no data read; None when the index cannot be read)."""
        out: dict[str, tuple[int, set[int] | None]] = {}
        for name in list(self.file):
            starts: set[int] | None = set()
            try:
                dataset = self.file[name]
                if dataset.chunks is None:  # format 1 strings: contiguous, allocated when first written
                    starts = {0} if dataset.id.get_storage_size() else set()
                elif hasattr(dataset.id, "chunk_iter"):  # HDF5 >= 1.12.3: one pass over the index
                    dataset.id.chunk_iter(lambda info, add=starts.add: add(info.chunk_offset[0]))
                else:
                    starts = {dataset.id.get_chunk_info(i).chunk_offset[0] for i in range(dataset.id.get_num_chunks())}
                out[name] = (self.rows_per_chunk(name), starts)
            except (OSError, RuntimeError, KeyError, ValueError):
                out[name] = (block, None)  # its chunk index cannot be read: `missing_chunks` says so
        return out

    def rows_per_chunk(self, name: str) -> int:
        chunks = self.file[name].chunks
        return chunks[0] if chunks else self.file[name].shape[0]  # format 1 strings: one contiguous block

    def classify(self, name: str, exc: Exception) -> str:
        """`CHECKSUM` when the chunk's filters fail (HDF5 says only "filter returned failure"; Fletcher-32, the last
        filter written, is the first one read), else `METADATA`: the read failed before the chunk's bytes, in its
        index (an index that fails its own checksum, or a damaged B-tree of an older store)."""
        return CHECKSUM if self.file[name].fletcher32 and "filter" in str(exc) else METADATA

    @staticmethod
    def settle() -> None:
        pass

    def delete_chunks(self, name: str, start: int, stop: int) -> None:
        """Overwrite rows ``[start, stop)`` with zeros: whole chunks, so HDF5 writes them without reading the old ones
        (an HDF5 chunk cannot be removed)."""
        dataset = self.file[name]
        dataset[start:stop] = np.zeros((stop - start, *dataset.shape[1:]), dtype=dataset.dtype)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
