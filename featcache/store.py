"""The feature store: one schema, a Zarr v3 and an HDF5 backend, provenance, resume and validation.

Arrays (first axis: N samples, train then val then test, ids sorted within each split):
``ids`` [N] str, ``split`` [N] str, ``orig_hw`` [N, 2] int32, ``images`` [N, 3, S, S] uint8,
``masks`` [N, S, S] uint8 (0/1), ``features`` [N, V, L*C, h, w] float16/float32/bfloat16
(bfloat16 is kept as its uint16 bit pattern, numpy having no bfloat16), ``written`` [N] bool.
``features`` holds the outputs of L encoder blocks (``encoder.layers``; without it, the last block alone),
block-major on the channel axis: byte for byte the C-order layout of ``[N, V, L, C, h, w]``, in the same
one-chunk-per-sample chunks, so a one-layer store is the format it always was.
Every array is chunked (Zarr: sharded) in blocks of ``shard_size`` samples, so writers of disjoint
blocks never touch the same file. All attributes are one JSON document under ``featcache``.

Every chunk carries a checksum (format 2: Zarr crc32c on each chunk and shard index, HDF5
Fletcher-32), so a changed bit fails its read; a chunk that is missing is found by listing the
store when it is opened. Either ends with one line naming the rows and the fix (`featcache.verify`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from featcache import __version__
from featcache.errors import FeatcacheError, OptionError

#: 2: every chunk checksummed (Zarr crc32c, HDF5 Fletcher-32; HDF5 strings fixed-length). Version 1 still reads.
FORMAT_VERSION = 2
ATTR = "featcache"
VIEWS: dict[str, tuple[str, ...]] = {"identity": ("identity",), "flips": ("identity", "h", "v", "hv")}
#: The spatial flip dims of each view of an image ``[..., H, W]``.
VIEW_FLIPS: dict[str, tuple[int, ...]] = {"identity": (), "h": (-1,), "v": (-2,), "hv": (-2, -1)}
FEATURE_DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float16": ("float16", torch.float16),
    "float32": ("float32", torch.float32),
    "bfloat16": ("uint16", torch.bfloat16),
}
COMPRESSORS = ("auto", "zstd", "lz4", "gzip", "lzf", "none")
#: The ``split`` of a sample left out by ``extract --skip-bad`` (an unreadable file).
SKIPPED = "skipped"
NOT_A_STORE_FIX = "point to a store that `featcache extract` wrote"
T = TypeVar("T")
#: Provenance entries whose difference makes an existing store another store.
IDENTITY_KEYS = ("encoder", "preprocessing", "dataset", "views", "dtype", "compute")


#: Arrays written once, when the store is created: resuming `extract` never rewrites them.
FIXED_ARRAYS = ("ids", "split", "orig_hw")
#: Arrays `extract` writes block by block (``written`` last): a block marked unwritten is recomputed whole.
BLOCK_ARRAYS = ("images", "masks", "features", "written")
MISSING, CHECKSUM, UNDECODABLE = "missing", "checksum mismatch", "undecodable"


class MalformedStoreError(FeatcacheError):
    """A featcache store whose own attribute is damaged: ours, so --overwrite may replace it."""


class NotAStoreError(FeatcacheError):
    """Something is at the path, but not a featcache store."""


class StoreDamagedError(FeatcacheError):
    """Chunks of a store are missing, fail their checksum or cannot be decoded."""


@dataclass(frozen=True)
class Damage:
    """Rows ``[start, stop)`` of ``array`` (whole chunks or shards) that cannot be trusted.

    ``what``: `MISSING`, `CHECKSUM` (mismatch) or `UNDECODABLE`; ``detail``: the library's message.
    """

    array: str
    start: int
    stop: int
    what: str
    detail: str = ""

    @property
    def rows(self) -> str:
        return f"rows {self.start}-{self.stop - 1}" if self.stop - self.start > 1 else f"row {self.start}"


def merge_damages(damages: Sequence[Damage]) -> list[Damage]:
    """Adjacent ranges of one array with the same ``what`` as one `Damage` (per-sample HDF5 chunks -> row ranges)."""
    out: list[Damage] = []
    for d in sorted(damages, key=lambda d: (d.array, d.start)):
        last = out[-1] if out else None
        if last is not None and (last.array, last.what, last.stop) == (d.array, d.what, d.start):
            out[-1] = Damage(d.array, last.start, d.stop, d.what, last.detail)
        else:
            out.append(d)
    return out


def damage_fix(path: str | Path, damages: Sequence[Damage]) -> str:
    """The command that fixes ``damages``: a re-extraction for `FIXED_ARRAYS`, else verify --repair and resume."""
    fixed = sorted({d.array for d in damages if d.array in FIXED_ARRAYS})
    if fixed:
        return (
            f"{'/'.join(fixed)} are written once at creation and cannot be recomputed by resuming: "
            f"extract the store again with `featcache extract ... --out {path} --overwrite`"
        )
    return (
        f"run `featcache verify {path} --repair`, then the same `featcache extract ... --out {path}` "
        "to recompute those samples"
    )


def damage_message(path: str | Path, damages: Sequence[Damage]) -> str:
    """One line naming the store, the damaged arrays and rows (up to four ranges) and the fix."""
    shown = ", ".join(f"{d.array} {d.rows} ({d.what})" for d in damages[:4])
    more = f" and {len(damages) - 4} more" if len(damages) > 4 else ""
    return f"{path} is damaged: {shown}{more}; {damage_fix(path, damages)}"


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


class _ZarrBackend:
    checksum = "crc32c"

    def __init__(self, group) -> None:
        self.group = group
        self._arrays: dict[str, Any] = {}

    @classmethod
    def create(cls, path: str) -> _ZarrBackend:
        import zarr

        return cls(zarr.open_group(path, mode="w", zarr_format=3))

    @classmethod
    def open(cls, path: str, writable: bool) -> _ZarrBackend:
        import zarr

        return cls(zarr.open_group(path, mode="r+" if writable else "r", zarr_format=3))

    @staticmethod
    def _compressors(name: str):
        import zarr

        if name in ("auto", "lz4"):
            return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
        if name == "zstd":
            return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
        if name == "gzip":
            return zarr.codecs.GzipCodec(level=4)
        if name == "none":
            return None
        raise OptionError(f"--compressor {name} is for HDF5 stores; a Zarr store takes zstd, lz4, gzip or none")

    def create_array(self, name: str, shape: tuple, dtype, block: int, compressor: str, str_len: int = 0) -> None:
        """Every chunk ends with its crc32c (shard indexes carry theirs by default): a changed bit fails the read."""
        import zarr

        chunks = sample_chunks(shape, block)
        crc = zarr.codecs.Crc32cCodec()
        if dtype is str or len(shape) == 1:
            self.group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=(block,),
                compressors=(zarr.codecs.ZstdCodec(), crc),
                fill_value="" if dtype is str else 0,
                config=WRITE_EMPTY,
            )
            return
        compressors = tuple(c for c in (self._compressors(compressor),) if c is not None) + (crc,)
        self.group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=chunks,
            shards=(block, *shape[1:]),
            compressors=compressors,
            fill_value=0,
            config=WRITE_EMPTY,
        )

    def __getitem__(self, name: str):
        if name not in self._arrays:
            self._arrays[name] = self.group[name].with_config(WRITE_EMPTY)
        return self._arrays[name]

    def read_attrs(self) -> dict:
        return dict(self.group.attrs.get(ATTR, {}))

    def write_attrs(self, meta: dict) -> None:
        self.group.attrs[ATTR] = meta

    def read_strings(self, name: str, rows: slice = slice(None)) -> list[str]:
        return [str(s) for s in self[name][rows]]

    def write_strings(self, name: str, start: int, values: Sequence[str]) -> None:
        self[name][start : start + len(values)] = np.asarray(list(values), dtype=str)

    def nbytes_stored(self) -> int:
        return sum(self.group[name].nbytes_stored() for name in self.group.array_keys())

    def rows_per_chunk(self, name: str) -> int:
        """Rows per stored object: a shard, or a chunk of an unsharded array."""
        array = self[name]
        return (array.shards or array.chunks)[0]

    def classify(self, name: str, exc: Exception) -> str:
        """`CHECKSUM` or `UNDECODABLE`: what a failed read of ``name`` means."""
        return CHECKSUM if "checksum" in str(exc).lower() else UNDECODABLE

    @staticmethod
    def settle() -> None:
        """Let the sibling tasks of a failed read finish on zarr's event loop: left running, they fail when the
        process exits and asyncio prints each of them (hundreds of lines of tracebacks after the one-line error)."""
        import asyncio

        from zarr.core.sync import sync

        async def drain() -> None:
            current = asyncio.current_task()
            while pending := [t for t in asyncio.all_tasks() if t is not current and not t.done()]:
                done, _ = await asyncio.wait(pending)
                for task in done:
                    if not task.cancelled():
                        task.exception()  # retrieved, so not reported as "never retrieved"

        sync(drain())

    def stored_chunks(self, block: int) -> dict[str, tuple[int, set[int]]]:
        """Per array: rows per stored object (``block``: every array is sharded, or 1-D chunked, by blocks along
        its first axis, whole along the others), and the first rows of the objects present.

        One listing of the store (also behind an fsspec URL), no chunk or metadata read.
        """
        from zarr.core.sync import collect_aiterator
        from zarr.storage import LocalStore

        root, store = self.group.store_path.path, self.group.store
        if isinstance(store, LocalStore):  # its listing stats every entry: os.walk measured 3x faster
            top = os.path.normpath(os.path.join(store.root, root))
            keys = [os.path.join(d, f)[len(top) + 1 :] for d, _, files in os.walk(top) for f in files]
        else:
            listed = collect_aiterator(store.list_prefix(f"{root}/" if root else ""))
            keys = [key[len(root) + 1 :] if root else key for key in listed]
        out: dict[str, tuple[int, set[int]]] = {}
        for key in keys:
            parts = key.split("/")  # NAME/c/I/0/...: the default chunk key encoding
            if len(parts) > 2 and parts[1] == "c":
                out.setdefault(parts[0], (block, set()))[1].add(int(parts[2]) * block)
        return out

    def delete_chunks(self, name: str, start: int, stop: int) -> None:
        """Remove the stored objects of rows ``[start, stop)`` (whole shards): unwritten rows then read as absent."""
        from zarr.core.sync import sync

        array = self[name]
        step = self.rows_per_chunk(name)
        for first in range(start - start % step, stop, step):
            key = array.metadata.encode_chunk_key((first // step, *[0] * (array.ndim - 1)))
            sync((array.store_path / key).delete())

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


#: Written into the HDF5 user block of every store (HDF5 never touches it), so a store that an
#: interrupted write left unreadable is still known as ours, and ``extract --overwrite`` may replace it.
H5_SIGNATURE = b"featcache store (HDF5)\n"
H5_USERBLOCK = 512


class DamagedStoreError(FeatcacheError):
    """A featcache HDF5 store that an interrupted write left unreadable (only `extract --overwrite` helps)."""


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


class _H5Backend:
    checksum = "fletcher32"

    def __init__(self, file) -> None:
        self.file = file

    @classmethod
    def create(cls, path: str) -> _H5Backend:
        """A new file with the featcache signature in its user block, written through a `_GuardedFile`."""
        import h5py

        guard = _GuardedFile(path, "w+b")
        backend = cls(h5py.File(guard, "w", userblock_size=H5_USERBLOCK))
        guard.seek(0)
        guard.write(H5_SIGNATURE)
        backend.guard = guard
        guard.raise_if_failed()
        return backend

    @classmethod
    def open(cls, path: str, writable: bool) -> _H5Backend:
        """Open for reading (HDF5's own driver) or for writing (through a `_GuardedFile`)."""
        import h5py

        guard = None
        try:
            guard = _GuardedFile(path, "r+b") if writable else None
            backend = cls(h5py.File(guard if writable else path, "r+" if writable else "r"))
        except OSError as exc:
            if guard is not None:
                guard.close()
            if _signed(path):
                raise DamagedStoreError(
                    f"the store at {path} was left unreadable by an interrupted write ({exc}); "
                    f"pass --overwrite to `featcache extract` to start it again"
                ) from exc
            raise NotAStoreError(f"{path} is not a readable HDF5 store ({exc}); {NOT_A_STORE_FIX}") from exc
        backend.guard = guard
        return backend

    def create_array(self, name: str, shape: tuple, dtype, block: int, compressor: str, str_len: int = 0) -> None:
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

    def __getitem__(self, name: str):
        return self.file[name]

    def read_attrs(self) -> dict:
        raw = self.file.attrs.get(ATTR)
        return json.loads(raw) if raw is not None else {}

    def write_attrs(self, meta: dict) -> None:
        self.file.attrs[ATTR] = json.dumps(meta)
        self.file.flush()

    def read_strings(self, name: str, rows: slice = slice(None)) -> list[str]:
        return list(self.file[name].asstr()[rows])

    def write_strings(self, name: str, start: int, values: Sequence[str]) -> None:
        self.file[name][start : start + len(values)] = np.asarray(list(values), dtype=object)

    def nbytes_stored(self) -> int:
        return Path(self.file.filename).stat().st_size

    def stored_chunks(self, block: int) -> dict[str, tuple[int, set[int]]]:
        """Per dataset: rows per chunk (``block`` or fewer), and the first rows of the chunks allocated (from the
        chunk index, no data read)."""
        out = {}
        for name, dataset in self.file.items():
            starts: set[int] = set()
            if dataset.chunks is None:  # format 1 strings: contiguous, allocated when first written
                starts = {0} if dataset.id.get_storage_size() else set()
            elif hasattr(dataset.id, "chunk_iter"):  # HDF5 >= 1.12.3: one pass over the index
                dataset.id.chunk_iter(lambda info, add=starts.add: add(info.chunk_offset[0]))
            else:
                starts = {dataset.id.get_chunk_info(i).chunk_offset[0] for i in range(dataset.id.get_num_chunks())}
            out[name] = (self.rows_per_chunk(name), starts)
        return out

    def rows_per_chunk(self, name: str) -> int:
        chunks = self.file[name].chunks
        return chunks[0] if chunks else self.file[name].shape[0]  # format 1 strings: one contiguous block

    def classify(self, name: str, exc: Exception) -> str:
        # HDF5 says only "filter returned failure"; Fletcher-32, the last filter written, is the first one read.
        return CHECKSUM if self.file[name].fletcher32 and "filter" in str(exc) else UNDECODABLE

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


_BACKENDS = {"zarr": _ZarrBackend, "hdf5": _H5Backend}


def store_exists(path: str | Path) -> bool:
    """Whether something is at ``path`` (a local path; URLs are checked by opening them)."""
    if is_url(path):
        try:
            _ZarrBackend.open(str(path), writable=False)
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


def describe_differences(old: dict, new: dict, keys: Sequence[str] = IDENTITY_KEYS) -> list[str]:
    """Human-readable ``key.sub: old -> new`` lines for the provenance entries that differ."""
    out: list[str] = []

    def short(value: Any) -> Any:
        return value[:12] + "…" if isinstance(value, str) and len(value) > 40 else value  # hashes

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            out.append(f"{prefix}: {short(a)} -> {short(b)}")

    for key in keys:
        walk(old.get(key), new.get(key), key)
    return out


@dataclass
class SplitData:
    """One split as tensors: features ``[n, V, C, h, w]``, masks ``[n, S, S]`` uint8, images ``[n, 3, S, S]`` uint8."""

    ids: list[str]
    indices: np.ndarray
    features: torch.Tensor
    masks: torch.Tensor
    images: torch.Tensor | None
    orig_hw: np.ndarray


class FeatureStore:
    """A feature store on disk (or behind an fsspec URL, Zarr only).

    ``FeatureStore.open(path)`` is the reader; ``FeatureStore.create(...)`` and the write methods
    are used by extraction.
    """

    def __init__(self, path: str | Path, backend, meta: dict, writable: bool) -> None:
        self.path = path
        self.backend = backend
        self.meta = meta
        self.writable = writable
        self._ids: list[str] | None = None
        self._splits: np.ndarray | None = None

    # ----- creation and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        meta: dict,
        ids: Sequence[str],
        splits: Sequence[str],
        orig_hw: np.ndarray,
        width: int,
        grid: tuple[int, int],
        shard_size: int = 32,
        compressor: str = "auto",
    ) -> FeatureStore:
        """Create an empty store for ``len(ids)`` samples; ``meta`` holds the provenance (see `provenance`)."""
        if compressor not in COMPRESSORS:
            raise OptionError(f"--compressor {compressor} is not one of {', '.join(COMPRESSORS)}")
        kind = backend_kind(path)
        n, size, views = len(ids), meta["preprocessing"]["size"], len(VIEWS[meta["views"]])
        storage_dtype = FEATURE_DTYPES[meta["dtype"]][0]
        meta = {
            **meta,
            "format_version": FORMAT_VERSION,
            "featcache_version": __version__,
            "complete": False,
            "backend": kind,
            "checksum": _BACKENDS[kind].checksum,
            "n": n,
            "width": width,
            "grid": list(grid),
            "shard_size": shard_size,
            "view_names": list(VIEWS[meta["views"]]),
        }
        backend = _BACKENDS[kind].create(str(path))
        backend.write_attrs(meta)  # first, so an interrupted creation is recognisably ours
        block = shard_size
        str_lens = {
            "ids": max((len(i.encode()) for i in ids), default=1),
            "split": max([len(SKIPPED), *(len(s.encode()) for s in splits)]),
        }
        for name, shape, dtype in (
            ("ids", (n,), str),
            ("split", (n,), str),
            ("orig_hw", (n, 2), "int32"),
            ("written", (n,), "bool"),
            ("images", (n, 3, size, size), "uint8"),
            ("masks", (n, size, size), "uint8"),
            ("features", (n, views, width, *grid), storage_dtype),
        ):
            backend.create_array(name, shape, dtype, block, compressor, str_lens.get(name, 0))
        backend.write_strings("ids", 0, ids)
        backend.write_strings("split", 0, splits)
        backend["orig_hw"][:] = np.asarray(orig_hw, dtype=np.int32).reshape(n, 2)
        return cls(path, backend, meta, writable=True)

    @classmethod
    def open(
        cls,
        path: str | Path,
        encoder: dict | None = None,
        writable: bool = False,
        allow_incomplete: bool = False,
    ) -> FeatureStore:
        """Open and validate a store.

        Refuses a path that is not a featcache store, an incomplete store or one with missing
        chunks (`missing_chunks`: one listing, no chunk read; both unless ``allow_incomplete``, whose
        callers check what they need), and — when ``encoder`` (an `encoder_provenance` dict) is
        given — a store written by another encoder, saying what differs. Reads of chunks that fail
        their checksum raise `StoreDamagedError` later, naming the rows.
        """
        kind = backend_kind(path)
        if not store_exists(path):
            raise FeatcacheError(f"no store at {path}; create it with `featcache extract DATA --out {path}`")
        try:
            backend = _BACKENDS[kind].open(str(path), writable)
            meta = backend.read_attrs()
        except FeatcacheError:
            raise
        except Exception as exc:
            raise NotAStoreError(f"{path} is not a featcache store ({type(exc).__name__}); {NOT_A_STORE_FIX}") from exc
        if meta.get("format_version") is None:
            backend.close()
            raise NotAStoreError(f"{path} exists but is not a featcache store; {NOT_A_STORE_FIX}")
        if type(meta["format_version"]) is not int:
            backend.close()
            raise MalformedStoreError(
                f"{path}: its featcache attribute is malformed (format_version {meta['format_version']!r}); "
                "re-extract with --overwrite"
            )
        if meta["format_version"] > FORMAT_VERSION:
            backend.close()
            raise FeatcacheError(
                f"{path} has store format {meta['format_version']}; this featcache reads up to "
                f"{FORMAT_VERSION}: upgrade featcache"
            )
        store = cls(path, backend, meta, writable)
        if not meta.get("complete") and not allow_incomplete:
            done = int(store.written().sum())
            backend.close()
            raise FeatcacheError(
                f"{path} is incomplete ({done}/{meta['n']} samples written; the extraction was interrupted); "
                f"run the same `featcache extract ... --out {path}` again to finish it"
            )
        if not allow_incomplete:
            try:
                store.check_whole()
            except FeatcacheError:
                backend.close()
                raise
        if encoder is not None:
            store.check_encoder(encoder)
        return store

    def check_encoder(self, encoder: dict) -> None:
        """Refuse if ``encoder`` (an `encoder_provenance` dict) is not the encoder that wrote this store."""
        ours = self.meta["encoder"]
        if (ours["arch"], ours["weights_sha256"]) != (encoder["arch"], encoder["weights_sha256"]):
            raise FeatcacheError(
                f"{self.path} was written by {describe_encoder(ours)}, not by {describe_encoder(encoder)}; "
                "extract a store with that encoder (`featcache extract DATA --encoder ... --out NEW_STORE`) or "
                "pass the store's own encoder"
            )

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- layout ---------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.meta["n"])

    @property
    def shard_size(self) -> int:
        return int(self.meta["shard_size"])

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self.meta["view_names"])

    @property
    def has_flip_views(self) -> bool:
        return self.meta["views"] == "flips"

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["size"])

    @property
    def patch_size(self) -> int:
        """Pixels per feature-grid cell: the encoder's patch size."""
        return self.image_size // int(self.meta["grid"][0])

    @property
    def layers(self) -> tuple[int, ...]:
        """The encoder blocks (1-based, ascending) whose outputs the features hold, side by side on channels."""
        encoder = self.meta["encoder"]
        if encoder.get("layers"):
            return tuple(int(k) for k in encoder["layers"])
        config = encoder["config"]
        return (int(config["depth"] if "depth" in config else config["num_layers"]),)

    @property
    def depth(self) -> int:
        config = self.meta["encoder"]["config"]
        return int(config["depth"] if "depth" in config else config["num_layers"])

    @property
    def layer_width(self) -> int:
        """Channels C of one block's features."""
        return int(self.meta["width"]) // len(self.layers)

    def layer_positions(self, layers: Sequence[int] | None = None) -> tuple[int, ...]:
        """Positions in `layers` of the blocks ``layers`` (1-based, or -1 for the model's last, ...; None: all
        stored), in ascending block order; refuses a block the store does not hold, in one line."""
        if layers is None:
            return tuple(range(len(self.layers)))
        wanted = sorted({k if k > 0 else self.depth + 1 + k for k in layers})
        missing = [k for k in wanted if k not in self.layers]
        if missing or not wanted:
            raise OptionError(
                f"--layers {','.join(map(str, layers))}: {self.path} holds the outputs of block"
                f"{'s' if len(self.layers) > 1 else ''} {', '.join(map(str, self.layers))} of {self.depth}, not "
                f"{', '.join(map(str, missing)) or 'none'}; pick among those, or extract a store with "
                f"`featcache extract ... --layers {','.join(map(str, wanted))}`"
            )
        return tuple(self.layers.index(k) for k in wanted)

    def feature_width(self, layers: Sequence[int] | None = None) -> int:
        """Channels of `features` read with ``layers``: the decoder's input width."""
        if layers is None:
            return int(self.meta["width"])
        return self.layer_width * len(self.layer_positions(layers))

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self._checked("ids", 0, self.n, lambda: self.backend.read_strings("ids"))
        return self._ids

    @property
    def splits(self) -> np.ndarray:
        if self._splits is None:
            self._splits = np.asarray(self._checked("split", 0, self.n, lambda: self.backend.read_strings("split")))
        return self._splits

    def indices(self, split: str) -> np.ndarray:
        """Sample indices (sorted) of one split: ``train``, ``val`` or ``test``."""
        if split not in ("train", "val", "test"):
            raise FeatcacheError(f"unknown split {split!r}; choose train, val or test")
        return np.flatnonzero(self.splits == split)

    def blocks(self) -> list[tuple[int, int]]:
        """The shard-aligned ``[start, stop)`` blocks that writes go in."""
        return [(s, min(s + self.shard_size, self.n)) for s in range(0, self.n, self.shard_size)]

    def written(self) -> np.ndarray:
        """Bool ``[N]``: which samples were fully written."""
        return np.asarray(self.read("written"), dtype=bool)

    def nbytes_stored(self) -> int:
        return self.backend.nbytes_stored()

    # ----- integrity ------------------------------------------------------------------------
    def missing_chunks(self, written: np.ndarray | None = None) -> list[Damage]:
        """Chunks that should be stored and are not, from one listing of the store (no chunk is read).

        Every chunk of `FIXED_ARRAYS` should be there; of `BLOCK_ARRAYS`, those of the blocks marked
        ``written`` (read here unless given; every block once the store is complete): a missing one
        would read as zeros. Unwritten blocks of an interrupted store are expected to lack theirs.
        """
        stored = self.backend.stored_chunks(self.shard_size)
        if self.meta.get("complete"):
            done = self.blocks()
        else:
            written = self.written() if written is None else written
            done = [(a, b) for a, b in self.blocks() if written[a:b].all()]
        damages = []
        for name in (*FIXED_ARRAYS, *BLOCK_ARRAYS):
            if name == "masks" and self.meta["format_version"] < 2 and self.meta["backend"] == "zarr":
                continue  # format 1 did not store an all-empty block of masks: absent is no proof of loss there
            step, starts = stored.get(name, (self.shard_size, set()))
            for a, b in self.blocks() if name in FIXED_ARRAYS else done:
                damages += [
                    Damage(name, r, min(r + step, self.n), MISSING)
                    for r in range(a - a % step, b, step)
                    if r not in starts
                ]
        return merge_damages(damages)

    def check_whole(self) -> None:
        """Refuse a store with missing chunks (`missing_chunks`) in one line: arrays, rows and the fix."""
        damages = self.missing_chunks()
        if damages:
            raise StoreDamagedError(damage_message(self.path, damages))

    def damaged_blocks(self) -> list[int]:
        """First rows of the written blocks whose images, masks, features or ``written`` chunks are missing.

        A listing, no chunk read. `extract` resuming the store computes these blocks again (as if unwritten).
        """
        damages = [d for d in self.missing_chunks() if d.array in BLOCK_ARRAYS]
        return [a for a, b in self.blocks() if any(d.start < b and a < d.stop for d in damages)]

    def check_rows(self, name: str, start: int, stop: int) -> list[Damage]:
        """Read rows ``[start, stop)`` of ``name``; the chunks among them that fail (checksum or decoding), merged.

        Missing chunks read as the fill value and are not seen here (see `missing_chunks`).
        """
        array, step = self.backend[name], self.backend.rows_per_chunk(name)
        try:
            np.asarray(array[start:stop])
            return []
        except Exception:  # narrowed below, chunk by chunk: what fails alone is damage
            damages = []
        for first in range(start - start % step, stop, step):
            try:
                np.asarray(array[first : first + step])
            except Exception as exc:
                what = self.backend.classify(name, exc)
                damages.append(Damage(name, first, min(first + step, self.n), what, str(exc)))
        self.backend.settle()
        return merge_damages(damages)

    def _checked(self, name: str, start: int, stop: int, read: Callable[[], T]) -> T:
        """``read()``; a failure that a chunk of rows ``[start, stop)`` of ``name`` reproduces alone becomes a
        `StoreDamagedError` naming those rows and the fix (else the original error is raised)."""
        try:
            return read()
        except Exception as exc:
            damages = self.check_rows(name, start, stop)
            if not damages:
                raise
            raise StoreDamagedError(damage_message(self.path, damages)) from exc

    def unwrite(self, damages: Sequence[Damage]) -> list[tuple[int, int]]:
        """Mark the blocks that hold ``damages`` of `BLOCK_ARRAYS` unwritten and clear their damaged chunks (no read,
        not even of an unwritten block, trips over them), so the same `featcache extract` computes exactly those
        blocks again; returns the blocks.

        ``complete`` is cleared first and the flags before the chunks, so an interruption leaves a store that
        readers refuse and extract resumes. `FIXED_ARRAYS` damage is left as it is: extract never rewrites them.
        """
        hits = [d for d in damages if d.array in BLOCK_ARRAYS]
        blocks = [(a, b) for a, b in self.blocks() if any(d.start < b and a < d.stop for d in hits)]
        if not blocks:
            return []
        self.update_meta(complete=False)
        for a, b in blocks:
            self.backend.delete_chunks("written", a, b)
        self.backend.flush()
        for d in hits:
            if d.array != "written":
                self.backend.delete_chunks(d.array, d.start, d.stop)
        self.backend.flush()
        return blocks

    # ----- reading --------------------------------------------------------------------------
    def read(self, name: str, indices: np.ndarray | Sequence[int] | None = None, inner: tuple = ()) -> np.ndarray:
        """Rows ``indices`` (any order) of array ``name`` as numpy; all rows when None.

        ``inner`` selects within each row (e.g. ``(slice(0, 1),)``: the first view of the features).
        A chunk that fails its checksum raises `StoreDamagedError` (one line: the rows and the fix).
        """
        rows = np.asarray(indices, dtype=np.int64) if indices is not None else None
        lo, hi = (0, self.n) if rows is None or rows.size == 0 else (int(rows.min()), int(rows.max()) + 1)
        return self._checked(name, lo, hi, lambda: self._read(name, rows, inner))

    def _read(self, name: str, indices: np.ndarray | None, inner: tuple) -> np.ndarray:
        array = self.backend[name]
        if indices is None:
            return np.asarray(array[(slice(None), *inner)])
        if indices.size == 0:
            return np.zeros((0, *array.shape[1:]), dtype=array.dtype)[(slice(None), *inner)]
        order = np.argsort(indices, kind="stable")
        sorted_idx = indices[order]
        lo, hi = int(sorted_idx[0]), int(sorted_idx[-1]) + 1
        # One contiguous read beats many small ones unless the rows are very sparse.
        if hi - lo <= 4 * len(sorted_idx):
            rows = np.asarray(array[(slice(lo, hi), *inner)])[sorted_idx - lo]
        else:
            rows = np.stack([np.asarray(array[(int(i), *inner)]) for i in sorted_idx])
        out = np.empty_like(rows)
        out[order] = rows
        return out

    def features(
        self,
        indices,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        identity_only: bool = False,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Features ``[n, V, L*C, h, w]`` of rows ``indices`` as a torch tensor (stored dtype unless ``dtype``);
        ``[n, 1, L*C, h, w]`` with ``identity_only``. ``layers`` (`layer_positions`; None: every stored block)
        picks the blocks read, concatenated on channels in block order."""
        views = slice(0, 1) if identity_only else slice(None)
        positions = self.layer_positions(layers) if layers is not None else ()
        c, every = (self.layer_width, positions == tuple(range(len(self.layers)))) if positions else (0, True)
        contiguous = every or positions == tuple(range(positions[0], positions[-1] + 1))
        if every:
            inner: tuple = (views,) if identity_only else ()
        elif contiguous:  # one channel range: only it is copied out of the chunks
            inner = (views, slice(positions[0] * c, (positions[-1] + 1) * c))
        else:
            inner = (views,)
        raw = torch.from_numpy(self.read("features", indices, inner))
        if not contiguous:
            raw = raw[:, :, [p * c + i for p in positions for i in range(c)]]
        if self.meta["dtype"] == "bfloat16":
            raw = raw.view(torch.bfloat16)
        return raw.to(device=device, dtype=dtype or raw.dtype)

    def masks(self, indices, device: torch.device | str = "cpu") -> torch.Tensor:
        """Masks ``[n, S, S]`` uint8 0/1."""
        return torch.from_numpy(self.read("masks", indices)).to(device)

    def images(self, indices, device: torch.device | str = "cpu") -> torch.Tensor:
        """Resized images ``[n, 3, S, S]`` uint8."""
        return torch.from_numpy(self.read("images", indices)).to(device)

    def orig_hw(self, indices=None) -> np.ndarray:
        return self.read("orig_hw", indices)

    def load_split(
        self,
        split: str,
        device: torch.device | str = "cpu",
        with_images: bool = False,
        indices: np.ndarray | None = None,
    ) -> SplitData:
        """A split (or the rows ``indices`` of it) as tensors, on ``device`` when they fit there, else on the CPU."""
        idx = self.indices(split) if indices is None else np.asarray(indices)
        feats = self.features(idx)
        masks = self.masks(idx)
        images = self.images(idx) if with_images else None
        target = placement(device, feats.nbytes + masks.nbytes + (images.nbytes if images is not None else 0))
        return SplitData(
            ids=[self.ids[i] for i in idx],
            indices=idx,
            features=feats.to(target),
            masks=masks.to(target),
            images=images.to(target) if images is not None else None,
            orig_hw=self.orig_hw(idx),
        )

    # ----- writing --------------------------------------------------------------------------
    def write_block(
        self, start: int, images: np.ndarray, masks: np.ndarray, features: torch.Tensor, skipped: Sequence[int] = ()
    ) -> None:
        """Write rows ``[start, start + n)`` (one shard-aligned block) and mark them written, last.

        Rows in ``skipped`` (unreadable files) get the split `SKIPPED`, so no split selects them.
        """
        stop = start + len(images)
        if start % self.shard_size or (stop % self.shard_size and stop != self.n):
            raise ValueError(f"block [{start}, {stop}) is not shard-aligned (shard size {self.shard_size})")
        storage = FEATURE_DTYPES[self.meta["dtype"]]
        feats = features.detach().to("cpu", storage[1]).contiguous()
        if self.meta["dtype"] == "bfloat16":
            feats = feats.view(torch.uint16)
        self.backend["images"][start:stop] = images
        self.backend["masks"][start:stop] = masks
        self.backend["features"][start:stop] = feats.numpy()
        if len(skipped):
            splits = np.asarray(self.splits[start:stop], dtype=object)
            splits[np.asarray(skipped) - start] = SKIPPED
            self.backend.write_strings("split", start, splits)
            self._splits = None
        self.backend.flush()  # the data reaches the file before the flags that vouch for it
        self.backend["written"][start:stop] = np.ones(stop - start, dtype=bool)
        self.backend.flush()

    def update_meta(self, **entries: Any) -> None:
        self.meta.update(entries)
        self.backend.write_attrs(self.meta)

    def mark_complete(self, **entries: Any) -> None:
        """Set the ``complete`` flag (last), after checking that every sample was written.

        Also records ``skipped_bad``: the ids of samples left out as unreadable.
        """
        missing = int((~self.written()).sum())
        if missing:
            raise FeatcacheError(f"{self.path}: {missing} samples were not written; run the same extract command again")
        self.check_whole()
        self._splits = None  # other ranks may have marked rows skipped
        skipped = [self.ids[i] for i in np.flatnonzero(self.splits == SKIPPED)]
        self.update_meta(complete=True, skipped_bad=skipped, **entries)


def describe_encoder(prov: dict) -> str:
    """``vit_b_16 (imagenet, weights 1a2b3c4d…)``: enough to tell two encoders apart in a message."""
    source = prov.get("source", {})
    kind = source.get("kind", "?")
    where = (
        f"random seed {source.get('seed')}"
        if kind == "random"
        else source.get("file", "its pretrained weights" if kind == "timm" else kind)
    )
    return f"{prov['arch']} ({kind}: {where}, weights {prov['weights_sha256'][:10]}…)"


def placement(device: torch.device | str, nbytes: int, headroom: float = 0.5) -> torch.device:
    """``device`` if ``nbytes`` fit in its free memory with ``headroom`` to spare, else the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch, reusable
    return device if nbytes < free * (1 - headroom) else torch.device("cpu")
