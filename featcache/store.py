"""The feature store: one schema, a Zarr v3 and an HDF5 backend, provenance, resume and validation.

Arrays (first axis: N samples, train then val then test, ids sorted within each split):
``ids`` [N] str, ``split`` [N] str, ``orig_hw`` [N, 2] int32, ``images`` [N, 3, S, S] uint8,
``masks`` [N, S, S] uint8 (0/1), ``features`` [N, V, C, h, w] float16/float32/bfloat16
(bfloat16 is kept as its uint16 bit pattern, numpy having no bfloat16), ``written`` [N] bool.
Every array is chunked (Zarr: sharded) in blocks of ``shard_size`` samples, so writers of disjoint
blocks never touch the same file. All attributes are one JSON document under ``featcache``.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from featcache import __version__
from featcache.errors import FeatcacheError, OptionError

FORMAT_VERSION = 1
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
#: Provenance entries whose difference makes an existing store another store.
IDENTITY_KEYS = ("encoder", "preprocessing", "dataset", "views", "dtype", "compute")


class MalformedStoreError(FeatcacheError):
    """A featcache store whose own attribute is damaged: ours, so --overwrite may replace it."""


class NotAStoreError(FeatcacheError):
    """Something is at the path, but not a featcache store."""


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


def sample_chunks(shape: tuple, block: int) -> tuple:
    """One chunk per sample (all its views: per-view chunks measured twice as slow to write and 1.6x
    slower to read whole, for 2x faster reads of the identity view alone); ``block`` for 1-D arrays."""
    return (1, *shape[1:]) if len(shape) > 1 else (block,)


class _ZarrBackend:
    def __init__(self, group) -> None:
        self.group = group

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

    def create_array(self, name: str, shape: tuple, dtype, block: int, compressor: str) -> None:
        chunks = sample_chunks(shape, block)
        shards = (block, *shape[1:]) if len(shape) > 1 else None
        if dtype is str:
            self.group.create_array(name, shape=shape, dtype=str, chunks=(block,))
            return
        self.group.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, shards=shards,
            compressors=self._compressors(compressor) if len(shape) > 1 else "auto", fill_value=0,
        )

    def __getitem__(self, name: str):
        return self.group[name]

    def read_attrs(self) -> dict:
        return dict(self.group.attrs.get(ATTR, {}))

    def write_attrs(self, meta: dict) -> None:
        self.group.attrs[ATTR] = meta

    def read_strings(self, name: str) -> list[str]:
        return [str(s) for s in self.group[name][:]]

    def nbytes_stored(self) -> int:
        return sum(self.group[name].nbytes_stored() for name in self.group.array_keys())

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

    def create_array(self, name: str, shape: tuple, dtype, block: int, compressor: str) -> None:
        import h5py

        if dtype is str:
            self.file.create_dataset(name, shape=shape, dtype=h5py.string_dtype())
            return
        if compressor not in ("auto", "none", "gzip", "lzf"):
            raise OptionError(f"--compressor {compressor} is for Zarr stores; an HDF5 store takes gzip, lzf or none")
        chunks = sample_chunks(shape, min(block, shape[0]))
        options = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"}}
        self.file.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fillvalue=0, **options.get(compressor, {}))

    def __getitem__(self, name: str):
        return self.file[name]

    def read_attrs(self) -> dict:
        raw = self.file.attrs.get(ATTR)
        return json.loads(raw) if raw is not None else {}

    def write_attrs(self, meta: dict) -> None:
        self.file.attrs[ATTR] = json.dumps(meta)
        self.file.flush()

    def read_strings(self, name: str) -> list[str]:
        return list(self.file[name].asstr()[:])

    def nbytes_stored(self) -> int:
        return Path(self.file.filename).stat().st_size

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
        meta = {**meta, "format_version": FORMAT_VERSION, "featcache_version": __version__, "complete": False,
                "backend": kind, "n": n, "width": width, "grid": list(grid), "shard_size": shard_size,
                "view_names": list(VIEWS[meta["views"]])}
        backend = _BACKENDS[kind].create(str(path))
        backend.write_attrs(meta)  # first, so an interrupted creation is recognisably ours
        block = shard_size
        for name, shape, dtype in (
            ("ids", (n,), str),
            ("split", (n,), str),
            ("orig_hw", (n, 2), "int32"),
            ("written", (n,), "bool"),
            ("images", (n, 3, size, size), "uint8"),
            ("masks", (n, size, size), "uint8"),
            ("features", (n, views, width, *grid), storage_dtype),
        ):
            backend.create_array(name, shape, dtype, block, compressor)
        backend["ids"][:] = np.asarray(list(ids), dtype=object if kind == "hdf5" else str)
        backend["split"][:] = np.asarray(list(splits), dtype=object if kind == "hdf5" else str)
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

        Refuses a path that is not a featcache store, an incomplete store (unless
        ``allow_incomplete``), and — when ``encoder`` (an `encoder_provenance` dict) is given — a
        store written by another encoder, saying what differs.
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
            raise FeatcacheError(f"{path} has store format {meta['format_version']}; this featcache reads up to {FORMAT_VERSION}: upgrade featcache")
        store = cls(path, backend, meta, writable)
        if not meta.get("complete") and not allow_incomplete:
            done = int(store.written().sum())
            backend.close()
            raise FeatcacheError(
                f"{path} is incomplete ({done}/{meta['n']} samples written; the extraction was interrupted); "
                f"run the same `featcache extract ... --out {path}` again to finish it"
            )
        if encoder is not None:
            store.check_encoder(encoder)
        return store

    def check_encoder(self, encoder: dict) -> None:
        """Refuse if ``encoder`` (an `encoder_provenance` dict) is not the encoder that wrote this store."""
        ours = self.meta["encoder"]
        if (ours["arch"], ours["weights_sha256"]) != (encoder["arch"], encoder["weights_sha256"]):
            raise FeatcacheError(
                f"{self.path} was written by {describe_encoder(ours)}, not by {describe_encoder(encoder)}; "
                f"extract a store with that encoder (`featcache extract DATA --encoder ... --out NEW_STORE`) or pass the store's own encoder"
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
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self.backend.read_strings("ids")
        return self._ids

    @property
    def splits(self) -> np.ndarray:
        if self._splits is None:
            self._splits = np.asarray(self.backend.read_strings("split"))
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
        return np.asarray(self.backend["written"][:], dtype=bool)

    def nbytes_stored(self) -> int:
        return self.backend.nbytes_stored()

    # ----- reading --------------------------------------------------------------------------
    def read(self, name: str, indices: np.ndarray | Sequence[int] | None = None, inner: tuple = ()) -> np.ndarray:
        """Rows ``indices`` (any order) of array ``name`` as numpy; all rows when None.

        ``inner`` selects within each row (e.g. ``(slice(0, 1),)``: the first view of the features).
        """
        array = self.backend[name]
        if indices is None:
            return np.asarray(array[(slice(None), *inner)])
        indices = np.asarray(indices, dtype=np.int64)
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

    def features(self, indices, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
                 identity_only: bool = False) -> torch.Tensor:
        """Features ``[n, V, C, h, w]`` of rows ``indices`` as a torch tensor (stored dtype unless ``dtype``);
        ``[n, 1, C, h, w]`` with ``identity_only``."""
        raw = torch.from_numpy(self.read("features", indices, (slice(0, 1),) if identity_only else ()))
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

    def load_split(self, split: str, device: torch.device | str = "cpu", with_images: bool = False,
                   indices: np.ndarray | None = None) -> SplitData:
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
    def write_block(self, start: int, images: np.ndarray, masks: np.ndarray, features: torch.Tensor,
                    skipped: Sequence[int] = ()) -> None:
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
            self.backend["split"][start:stop] = splits if self.meta["backend"] == "hdf5" else splits.astype(str)
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
        self._splits = None  # other ranks may have marked rows skipped
        skipped = [self.ids[i] for i in np.flatnonzero(self.splits == SKIPPED)]
        self.update_meta(complete=True, skipped_bad=skipped, **entries)


def describe_encoder(prov: dict) -> str:
    """``vit_b_16 (imagenet, weights 1a2b3c4d…)``: enough to tell two encoders apart in a message."""
    source = prov.get("source", {})
    kind = source.get("kind", "?")
    where = f"random seed {source.get('seed')}" if kind == "random" else source.get("file", kind)
    return f"{prov['arch']} ({kind}: {where}, weights {prov['weights_sha256'][:10]}…)"


def placement(device: torch.device | str, nbytes: int, headroom: float = 0.5) -> torch.device:
    """``device`` if ``nbytes`` fit in its free memory with ``headroom`` to spare, else the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch, reusable
    return device if nbytes < free * (1 - headroom) else torch.device("cpu")
