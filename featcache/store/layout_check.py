"""The arrays a store's provenance implies, as one table (`array_specs`), and the check of what is on disk against
it: shape, dtype, chunking and codecs, the checksum included (`layout_damages`).

Chunk checksums prove a chunk's bytes, not the metadata that says how to read them: an edited ``zarr.json`` (a
shorter shape, another dtype, a codec left out) or a damaged HDF5 object header reads "successfully" into wrong
numbers or a raw ``IndexError``. So opening a store compares every array's metadata with the table and refuses a
mismatch in one line, naming the array; only a new extraction (``extract --overwrite``) repairs it, since
resuming would write into the same wrong layout.
"""

from __future__ import annotations

from featcache.store.backend import Backend
from featcache.store.integrity import METADATA, Damage
from featcache.store.schema import FEATURE_DTYPES, VIEWS, ArraySpec, StoreRecord


def array_specs(record: StoreRecord) -> dict[str, ArraySpec]:
    """Every array of a store with provenance ``record``, in the order `FeatureStore.create` makes them:
    ``ids``/``split`` [N] text, ``orig_hw`` [N, 2] int32, ``written`` [N] bool, ``images`` [N, 3, S, S] and ``masks``
    [N, S, S] uint8, ``features`` [N, V, L*C, h, w] and, with ``tail_tokens``, ``tokens`` [N, V, T, C] in the storage
    dtype of ``record.dtype``."""
    n, size, block = record.n, record.preprocessing.size, record.shard_size
    checksum = record.format_version >= 2
    views, storage = len(VIEWS[record.views]), FEATURE_DTYPES[record.dtype][0]
    table = (
        ("ids", (n,), str),
        ("split", (n,), str),
        ("orig_hw", (n, 2), "int32"),
        ("written", (n,), "bool"),
        ("images", (n, 3, size, size), "uint8"),
        ("masks", (n, size, size), "uint8"),
        ("features", (n, views, record.width, *record.grid), storage),
    )
    if record.tail_tokens:
        table += (("tokens", (n, views, record.n_tokens, record.width // len(record.layers)), storage),)
    return {name: ArraySpec(shape, dtype, block, checksum) for name, shape, dtype in table}


def layout_damages(backend: Backend, record: StoreRecord) -> list[Damage]:
    """One `METADATA` damage per array whose metadata differs from `array_specs` (or cannot be read), naming the
    first difference; an empty list for a store laid out as its provenance says."""
    damages = []
    for name, spec in array_specs(record).items():
        try:
            problems = backend.layout_problems(name, spec)
        except Exception as exc:  # any failure to read an array's metadata is that array's damage
            problems = [f"its metadata cannot be read ({type(exc).__name__}: {_short(exc)})"]
        if problems:
            damages.append(Damage(name, 0, record.n, METADATA, problems[0]))
    return damages


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]
