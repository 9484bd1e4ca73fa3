"""The store's schema: its arrays, their dtypes and layout, the flip views, and the identity of a store.

Arrays (first axis: N samples, train then val then test, ids sorted within each split):
``ids`` [N] str, ``split`` [N] str, ``orig_hw`` [N, 2] int32, ``images`` [N, 3, S, S] uint8,
``masks`` [N, S, S] uint8 (0/1), ``features`` [N, V, L*C, h, w] float16/float32/bfloat16
(bfloat16 is kept as its uint16 bit pattern, numpy having no bfloat16), ``written`` [N] bool.
``features`` holds the outputs of L encoder blocks (``encoder.layers``; without it, the last block alone),
block-major on the channel axis: byte for byte the C-order layout of ``[N, V, L, C, h, w]``, in the same
one-chunk-per-sample chunks as a one-layer store. With ``extract --tail-tokens K``, ``tokens`` [N, V, T, C] in the
features' dtype holds each sample-view's full token sequence entering the encoder's last K blocks (T: prefix
tokens such as the class token and registers, then the h*w patch tokens; C: one block's width).
Every array is chunked (Zarr: sharded) in blocks of ``shard_size`` samples, so writers of disjoint
blocks never touch the same file. All attributes are one JSON document under ``featcache``.

Every chunk carries a checksum (format 2: Zarr crc32c on each chunk and shard index, HDF5
Fletcher-32), so a changed bit fails its read; a chunk that is missing is found by listing the
store when it is opened. Either ends with one line naming the rows and the fix (`featcache.store.verify`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from featcache.core.errors import FeatcacheError
from featcache.core.json_record import JsonRecord, RecordError
from featcache.models.record import EncoderRecord
from featcache.store.errors import NOT_A_STORE_FIX, MalformedStoreError, NotAStoreError

#: 2: every chunk checksummed (Zarr crc32c, HDF5 Fletcher-32; HDF5 strings fixed-length). 3: the provenance sealed
#: by its own sha256 (`SEAL`), HDF5 metadata checksummed (the 1.10 file format). Versions 1 and 2 still read.
FORMAT_VERSION = 3
ATTR = "featcache"
#: The provenance entry holding the sha256 of the rest of the document (`seal`), from format 3 on.
SEAL = "provenance_sha256"
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
#: Provenance entries whose difference makes an existing store another store.
IDENTITY_KEYS = ("encoder", "preprocessing", "dataset", "views", "dtype", "compute", "tail_tokens")


#: Arrays written once, when the store is created: resuming `extract` never rewrites them.
FIXED_ARRAYS = ("ids", "split", "orig_hw")
#: Arrays `extract` writes block by block (``written`` last): a block marked unwritten is recomputed whole.
BLOCK_ARRAYS = ("images", "masks", "features", "tokens", "written")


def block_arrays(record: StoreIdentity) -> tuple[str, ...]:
    """The `BLOCK_ARRAYS` a store of ``record`` holds: ``tokens`` only where it was extracted with ``--tail-tokens``."""
    return tuple(name for name in BLOCK_ARRAYS if name != "tokens" or record.tail_tokens)


@dataclass(frozen=True)
class ArraySpec:
    """What one array must be: its ``shape``, its numpy ``dtype`` (``str`` for text), stored in blocks of
    ``block`` rows (arrays of more than one axis: one chunk per sample, a block per Zarr shard), and whether every
    chunk carries the format's checksum (False only for format 1)."""

    shape: tuple[int, ...]
    dtype: str | type
    block: int
    checksum: bool

    @property
    def chunks(self) -> tuple[int, ...]:
        """Rows and inner shape of one chunk: a sample (all its views) or, for 1-D arrays, a block."""
        return (1, *self.shape[1:]) if len(self.shape) > 1 else (self.block,)


@dataclass(kw_only=True)
class Preprocessing(JsonRecord):
    """How the images were made the encoder's input: the square ``size`` in pixels, the interpolations, and where
    the normalisation happens."""

    size: int
    image_interpolation: str
    mask_interpolation: str
    normalisation: str
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class DatasetRecord(JsonRecord):
    """The dataset a store was extracted from: its layout, counts per split, how splits it lacked were drawn
    (``split_note``, ``split_config``: `featcache.data.SplitConfig`'s fields), a fingerprint of its file names and
    sizes, and the files left out as unpaired."""

    layout: str
    counts: dict[str, int]
    split_note: str = ""
    split_config: dict | None = None
    fingerprint: str
    skipped: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class ExtractionRecord(JsonRecord):
    """How long the extraction took: measured over the samples this run computed, scaled to the whole store."""

    measured_seconds: float | None = None
    measured_images: int | None = None
    seconds: float | None = None
    images_per_second: float | None = None
    device: str | None = None
    world_size: int | None = None
    batch_size: int | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class StoreIdentity(JsonRecord):
    """What makes a store the store it is (`IDENTITY_KEYS`), and when it was made: an existing store is resumed
    only into the same identity."""

    NESTED: ClassVar = {"encoder": EncoderRecord, "preprocessing": Preprocessing, "dataset": DatasetRecord}
    OPTIONAL: ClassVar = ("dataset_root", "compute", "created", "tail_tokens")

    encoder: EncoderRecord
    preprocessing: Preprocessing
    dataset: DatasetRecord
    dataset_root: str | None = None
    views: str
    dtype: str
    compute: str | None = None
    created: str | None = None
    tail_tokens: int | None = None  # K: the ``tokens`` array holds the tokens entering the last K blocks
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def fingerprint(self) -> str:
        """16 hex digits of the sha256 of the identity entries (`IDENTITY_KEYS`): stores with the same fingerprint
        hold the same features (experiment trackers record it with each run)."""
        document = self.to_json()
        identity = json.dumps({key: document.get(key) for key in IDENTITY_KEYS}, sort_keys=True)
        return hashlib.sha256(identity.encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class StoreRecord(StoreIdentity):
    """A store's provenance, the JSON attribute `ATTR`: its identity, then its format and layout (``n`` samples,
    feature ``width`` L*C on a ``grid``, blocks of ``shard_size``), whether it is ``complete``, the ids of samples
    left out as unreadable, and the extraction's timing; with ``tail_tokens``, ``n_tokens`` (T) per sample-view."""

    NESTED: ClassVar = {**StoreIdentity.NESTED, "extraction": ExtractionRecord}
    OPTIONAL: ClassVar = (*StoreIdentity.OPTIONAL, "checksum", "skipped_bad", "extraction", "n_tokens")

    format_version: int
    featcache_version: str
    complete: bool = False
    backend: str
    checksum: str | None = None
    n: int
    width: int
    grid: list[int]
    shard_size: int
    view_names: list[str]
    skipped_bad: list[str] | None = None
    extraction: ExtractionRecord | None = None
    n_tokens: int | None = None

    @property
    def depth(self) -> int:
        return self.encoder.depth

    @property
    def layers(self) -> tuple[int, ...]:
        """The encoder blocks (1-based, ascending) whose outputs the features hold, side by side on channels."""
        return self.encoder.read_layers


def read_record(meta: dict, path: str | Path) -> StoreRecord:
    """The record of the attribute `ATTR` of the store at ``path`` (as its backend read it: ``{}`` when absent).

    Refuses a document that is not a featcache store's, one of a newer format, and one whose entries are missing
    or of the wrong kind (damaged: only ``extract --overwrite`` helps), each in one line.
    """
    if not isinstance(meta, dict):
        raise MalformedStoreError(
            f"{path}: its provenance (the {ATTR!r} attribute) is damaged (a {type(meta).__name__}, not a JSON object); "
            f"re-extract the store with `featcache extract ... --out {path} --overwrite`"
        )
    version = meta.get("format_version")
    if version is None:
        raise NotAStoreError(f"{path} exists but is not a featcache store; {NOT_A_STORE_FIX}")
    if type(version) is not int:
        raise MalformedStoreError(
            f"{path}: its featcache attribute is malformed (format_version {version!r}); re-extract with --overwrite"
        )
    if version > FORMAT_VERSION:
        raise FeatcacheError(
            f"{path} has store format {version}; this featcache reads up to {FORMAT_VERSION}: upgrade featcache"
        )
    try:
        record = StoreRecord.from_json(meta)
        problem = _wrong_value(record) or _broken_seal(meta, version)
    except (RecordError, TypeError, ValueError, KeyError, AttributeError) as exc:
        problem = str(exc) if isinstance(exc, RecordError) else f"{type(exc).__name__}: {exc}"
    if problem:
        raise MalformedStoreError(
            f"{path}: its provenance (the {ATTR!r} attribute) is damaged ({problem}); re-extract the store with "
            f"`featcache extract ... --out {path} --overwrite`"
        )
    return record


def seal(document: dict) -> dict:
    """``document`` (a `StoreRecord`'s JSON) with `SEAL`: the sha256 of the rest, so that any changed byte of the
    provenance is seen when it is read (`read_record`), whatever entry it hits."""
    rest = {k: v for k, v in document.items() if k != SEAL}
    return {**rest, SEAL: _digest(rest)}


def _digest(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _broken_seal(meta: dict, version: int) -> str:
    """What is wrong with the seal of a provenance document of format ``version`` (empty: nothing)."""
    if SEAL not in meta:
        return f"its {SEAL} entry is missing" if version >= 3 else ""
    rest = {k: v for k, v in meta.items() if k != SEAL}
    if meta[SEAL] != _digest(rest):
        return f"it no longer matches its {SEAL}: an entry was changed after it was written"
    return ""


def _wrong_value(record: StoreRecord) -> str:
    """The first entry of ``record`` that readers rely on and that holds an impossible value (empty: none)."""
    counts = {"n": record.n, "width": record.width, "shard_size": record.shard_size, "size": record.preprocessing.size}
    for name, value in counts.items():
        if type(value) is not int or value < 1:
            return f"{name} {value!r} is not a positive whole number"
    grid = record.grid
    if not isinstance(grid, list) or len(grid) != 2 or any(type(g) is not int or g < 1 for g in grid):
        return f"grid {grid!r} is not two positive whole numbers"
    layers = record.encoder.read_layers  # a damaged config raises here: the caller names it
    if any(type(k) is not int or not 1 <= k <= record.encoder.depth for k in layers) or record.width % len(layers):
        return f"encoder.layers {list(layers)!r} of width {record.width}"
    if record.views not in VIEWS or list(record.view_names) != list(VIEWS[record.views]):
        return f"views {record.views!r} with view_names {record.view_names!r}"
    if record.dtype not in FEATURE_DTYPES:
        return f"dtype {record.dtype!r} is not one of {', '.join(FEATURE_DTYPES)}"
    if record.backend not in ("zarr", "hdf5") or type(record.complete) is not bool:
        return f"backend {record.backend!r} or complete {record.complete!r}"
    if not isinstance(record.encoder.weights_sha256, str) or not isinstance(record.encoder.arch, str):
        return "encoder.arch or encoder.weights_sha256 is not text"
    tail, tokens = record.tail_tokens, record.n_tokens
    if tail is not None and (type(tail) is not int or not 1 <= tail <= record.encoder.depth):
        return f"tail_tokens {tail!r} is not a number of blocks from 1 to {record.encoder.depth}"
    if tail and (type(tokens) is not int or tokens < 1):
        return f"n_tokens {tokens!r} is not a positive whole number"
    return ""


def describe_differences(old: StoreIdentity, new: StoreIdentity) -> list[str]:
    """Human-readable ``key.sub: old -> new`` lines for the identity entries (`IDENTITY_KEYS`) that differ."""
    out: list[str] = []
    old_json, new_json = old.to_json(), new.to_json()

    def short(value: Any) -> Any:
        return value[:12] + "…" if isinstance(value, str) and len(value) > 40 else value  # hashes

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        elif a != b:
            out.append(f"{prefix}: {short(a)} -> {short(b)}")

    for key in IDENTITY_KEYS:
        walk(old_json.get(key), new_json.get(key), key)
    return out
