"""The Zarr v3 backend: sharded arrays, crc32c on every chunk and shard index, listing for missing chunks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from featcache.core.errors import OptionError
from featcache.store.backend import sample_chunks
from featcache.store.errors import MalformedStoreError
from featcache.store.integrity import CHECKSUM, UNDECODABLE
from featcache.store.schema import ATTR, ArraySpec

#: Zarr stores every chunk, even one equal to the fill value (an all-empty block of masks), so a missing
#: chunk always means a lost one.
WRITE_EMPTY = {"write_empty_chunks": True}
#: The bytes-to-bytes codecs `create_array` may put between the serializer and the checksum.
COMPRESSOR_CODECS = ("blosc", "zstd", "gzip")
#: How chunk keys are spelled (``NAME/c/0/0``): `stored_chunks` lists them so.
CHUNK_KEYS = {"name": "default", "configuration": {"separator": "/"}}


class ZarrBackend:
    checksum = "crc32c"

    def __init__(self, group) -> None:
        self.group = group
        self._arrays: dict[str, Any] = {}

    @classmethod
    def create(cls, path: str) -> ZarrBackend:
        import zarr

        return cls(zarr.open_group(path, mode="w", zarr_format=3))

    @classmethod
    def open(cls, path: str, writable: bool) -> ZarrBackend:
        """The group at ``path``; a local featcache store whose group metadata cannot be read is
        `MalformedStoreError` (ours, damaged: ``extract --overwrite`` may replace it)."""
        import zarr

        try:
            return cls(zarr.open_group(path, mode="r+" if writable else "r", zarr_format=3))
        except Exception as exc:
            if not all(os.path.isfile(os.path.join(path, name, "zarr.json")) for name in ("features", "written")):
                raise
            raise MalformedStoreError(
                f"{path}: its Zarr group metadata (zarr.json) cannot be read ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:160]}); re-extract the store with "
                f"`featcache extract ... --out {path} --overwrite`"
            ) from exc

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

    def create_array(self, name: str, shape: tuple, dtype, *, block: int, compressor: str, str_len: int = 0) -> None:
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

    def layout_problems(self, name: str, spec: ArraySpec) -> list[str]:
        """How the metadata of array ``name`` differs from ``spec`` (`featcache.store.layout_check`), first
        difference first: shape, dtype, chunks and shards, fill value, chunk keys, then the codecs (a little-endian
        serializer first, crc32c last on every chunk and shard index, only known compressors between)."""
        if name not in self.group.array_keys():
            return ["the array is missing"]
        array = self.group[name]
        meta, text = array.metadata, spec.dtype is str
        dtype = "text" if array.dtype.kind in "TUO" else str(array.dtype)
        sharded = len(spec.shape) > 1
        checks = (
            ("shape", list(array.shape), list(spec.shape)),
            ("dtype", dtype, "text" if text else str(np.dtype(spec.dtype))),
            ("chunks", list(array.chunks), list(spec.chunks)),
            ("shards", array.shards and list(array.shards), [spec.block, *spec.shape[1:]] if sharded else None),
            ("fill value", meta.fill_value, "" if text else 0),
            ("chunk keys", meta.chunk_key_encoding.to_dict(), CHUNK_KEYS),
            ("storage transformers", list(meta.storage_transformers), []),
        )
        problems = [
            f"{what} {found}, the provenance implies {wanted}" for what, found, wanted in checks if found != wanted
        ]
        if problems:
            return problems
        if sharded:
            codec = meta.codecs[0].to_dict() if len(meta.codecs) == 1 else {}
            if codec.get("name") != "sharding_indexed":
                return [
                    f"codecs {[c.to_dict()['name'] for c in meta.codecs]}, the provenance implies one shard per block"
                ]
            index = [c.to_dict() for c in meta.codecs[0].index_codecs]
            if [c["name"] for c in index] != ["bytes", "crc32c"] or not _little(index[0]):
                return [f"shard index codecs {index}, the provenance implies little-endian bytes and crc32c"]
            return _codec_problems([c.to_dict() for c in meta.codecs[0].codecs], text=False, checksum=spec.checksum)
        return _codec_problems([c.to_dict() for c in meta.codecs], text=text, checksum=spec.checksum)

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
            # A write killed midway can leave zarr's temporary "I.<uuid>.partial" beside the chunks: not a chunk.
            if len(parts) > 2 and parts[1] == "c" and parts[2].isdigit():
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


def _little(codec: dict) -> bool:
    """Whether a ``bytes`` codec reads little-endian (one-byte types name no endianness)."""
    return codec.get("configuration", {}).get("endian", "little") == "little"


def _codec_problems(codecs: list[dict], *, text: bool, checksum: bool) -> list[str]:
    """What is wrong with one chunk's codec pipeline: the serializer `create_array` writes (``vlen-utf8`` for text,
    little-endian ``bytes`` else) first, ``crc32c`` last (from format 2 on), only `COMPRESSOR_CODECS` between."""
    names = [c["name"] for c in codecs]
    serializer = "vlen-utf8" if text else "bytes"
    if not names or names[0] != serializer or not _little(codecs[0]):
        return [f"codecs {names}, the provenance implies the {serializer} serializer first, little-endian"]
    middle = names[1:-1] if checksum else names[1:]
    if checksum and (len(names) < 2 or names[-1] != "crc32c"):
        return [f"codecs {names}, the provenance implies crc32c last (every chunk's checksum)"]
    if len(middle) > 1 or any(name not in COMPRESSOR_CODECS for name in middle):
        return [f"codecs {names}, the provenance implies at most one compressor ({', '.join(COMPRESSOR_CODECS)})"]
    return []
