"""The feature store's API: creating, opening and validating a store, its layout, reading rows as tensors, and
writing blocks (`featcache.store.extract` is the writer)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featcache import __version__
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.runtime import placement
from featcache.models.record import EncoderRecord
from featcache.store.backend import Backend, backend_kind
from featcache.store.errors import NOT_A_STORE_FIX, MalformedStoreError, NotAStoreError
from featcache.store.integrity import Damage, Integrity, damage_message
from featcache.store.layout_check import array_specs, layout_damages
from featcache.store.live_lock import refuse_if_being_written
from featcache.store.location import BACKENDS, store_exists
from featcache.store.schema import (
    COMPRESSORS,
    FEATURE_DTYPES,
    FORMAT_VERSION,
    SKIPPED,
    VIEWS,
    ExtractionRecord,
    StoreIdentity,
    StoreRecord,
    read_record,
    seal,
)


@dataclass
class SplitData:
    """One split as tensors: features ``[n, V, C, h, w]``, masks ``[n, S, S]`` uint8, images ``[n, 3, S, S]`` uint8."""

    ids: list[str]
    indices: np.ndarray
    features: torch.Tensor
    masks: torch.Tensor
    images: torch.Tensor | None
    orig_hw: np.ndarray


class FeatureStore(Integrity):
    """A feature store on disk (or behind an fsspec URL, Zarr only).

    ``FeatureStore.open(path)`` is the reader; ``FeatureStore.create(...)`` and the write methods
    are used by extraction.
    """

    def __init__(self, path: str | Path, backend: Backend, record: StoreRecord, *, writable: bool) -> None:
        self.path = path
        self.backend = backend
        self.record = record
        self.writable = writable
        #: The arrays whose metadata differ from what the provenance implies (`layout_damages`), found at `open`.
        self.layout: list[Damage] = []
        self._ids: list[str] | None = None
        self._splits: np.ndarray | None = None

    # ----- creation and opening -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        identity: StoreIdentity,
        ids: Sequence[str],
        splits: Sequence[str],
        orig_hw: np.ndarray,
        width: int,
        grid: tuple[int, int],
        shard_size: int = 32,
        compressor: str = "auto",
        tokens: tuple[int, int] | None = None,
    ) -> FeatureStore:
        """Create an empty store for ``len(ids)`` samples of the given ``identity`` (what the extraction records),
        features of ``width`` channels on a ``grid``, written in blocks of ``shard_size`` samples; ``tokens``: the
        (T, C) of each view's cached tokens, for an identity with ``tail_tokens``."""
        if bool(identity.tail_tokens) != (tokens is not None):
            raise ValueError("tokens (T, C) go with an identity that has tail_tokens, and only with one")
        if compressor not in COMPRESSORS:
            raise OptionError(f"--compressor {compressor} is not one of {', '.join(COMPRESSORS)}")
        kind = backend_kind(path)
        n = len(ids)
        record = StoreRecord(
            **{f.name: getattr(identity, f.name) for f in dataclasses.fields(identity)},
            format_version=FORMAT_VERSION,
            featcache_version=__version__,
            complete=False,
            backend=kind,
            checksum=BACKENDS[kind].checksum,
            n=n,
            width=width,
            grid=list(grid),
            shard_size=shard_size,
            view_names=list(VIEWS[identity.views]),
            n_tokens=tokens[0] if tokens else None,
        )
        backend = BACKENDS[kind].create(str(path))
        backend.write_attrs(seal(record.to_json()))  # first, so an interrupted creation is recognisably ours
        str_lens = {
            "ids": max((len(i.encode()) for i in ids), default=1),
            "split": max([len(SKIPPED), *(len(s.encode()) for s in splits)]),
        }
        for name, spec in array_specs(record).items():  # what `open` checks the store against
            backend.create_array(
                name, spec.shape, spec.dtype, block=shard_size, compressor=compressor, str_len=str_lens.get(name, 0)
            )
        backend.write_strings("ids", 0, ids)
        backend.write_strings("split", 0, splits)
        backend["orig_hw"][:] = np.asarray(orig_hw, dtype=np.int32).reshape(n, 2)
        return cls(path, backend, record, writable=True)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        encoder: EncoderRecord | None = None,
        writable: bool = False,
        allow_incomplete: bool = False,
        check_layout: bool = True,
    ) -> FeatureStore:
        """Open and validate a store.

        Refuses a path that is not a featcache store; a store that another live process is writing (its lock,
        unless ``writable``: the writer holds that lock); damaged provenance; arrays whose metadata differ from
        what the provenance implies (`featcache.store.layout_check`, unless ``check_layout`` is False: `verify`
        lists them itself); an incomplete store or one with missing chunks (`missing_chunks`: one listing, no
        chunk read; both unless ``allow_incomplete``, whose callers check what they need), and — when
        ``encoder`` (an `EncoderRecord`) is given — a store written by another encoder, saying what differs.
        Reads of chunks that fail their checksum raise `DamagedChunksError` later, naming the rows.
        """
        kind = backend_kind(path)
        if not store_exists(path):
            raise FeatcacheError(f"no store at {path}; create it with `featcache extract DATA --out {path}`")
        if not writable:
            refuse_if_being_written(path)
        try:
            backend = BACKENDS[kind].open(str(path), writable)
        except FeatcacheError:
            raise
        except Exception as exc:
            raise NotAStoreError(f"{path} is not a featcache store ({type(exc).__name__}); {NOT_A_STORE_FIX}") from exc
        try:
            record, damages = _provenance(path, backend)
        except FeatcacheError:
            backend.close()
            raise
        store = cls(path, backend, record, writable=writable)
        store.layout = damages
        if damages and check_layout:
            backend.close()
            raise MalformedStoreError(damage_message(path, damages))
        if not record.complete and not allow_incomplete:
            done = int(store.written().sum())
            backend.close()
            raise FeatcacheError(
                f"{path} is incomplete ({done}/{record.n} samples written; the extraction was interrupted); "
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

    def check_encoder(self, encoder: EncoderRecord) -> None:
        """Refuse if ``encoder`` is not the encoder that wrote this store."""
        ours = self.record.encoder
        if not ours.same_weights(encoder):
            raise FeatcacheError(
                f"{self.path} was written by {ours.describe()}, not by {encoder.describe()}; drop --encoder to use "
                "the store's own encoder, pass the weights file the store was extracted with, or extract a store "
                "with that encoder (`featcache extract DATA --encoder ... --out NEW_STORE`)"
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
        return int(self.record.n)

    @property
    def shard_size(self) -> int:
        return int(self.record.shard_size)

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self.record.view_names)

    @property
    def has_flip_views(self) -> bool:
        return self.record.views == "flips"

    @property
    def image_size(self) -> int:
        return int(self.record.preprocessing.size)

    @property
    def patch_size(self) -> int:
        """Pixels per feature-grid cell: the encoder's patch size."""
        return self.image_size // int(self.record.grid[0])

    @property
    def tail_tokens(self) -> int:
        """K: the ``tokens`` array holds the tokens entering the encoder's last K blocks (0: no ``tokens``)."""
        return int(self.record.tail_tokens or 0)

    @property
    def layers(self) -> tuple[int, ...]:
        """The encoder blocks (1-based, ascending) whose outputs the features hold, side by side on channels."""
        return tuple(int(k) for k in self.record.layers)

    @property
    def depth(self) -> int:
        return self.record.depth

    @property
    def layer_width(self) -> int:
        """Channels C of one block's features."""
        return int(self.record.width) // len(self.layers)

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
            return int(self.record.width)
        return self.layer_width * len(self.layer_positions(layers))

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = self._checked("ids", 0, self.n, read=lambda: self.backend.read_strings("ids"))
        return self._ids

    @property
    def splits(self) -> np.ndarray:
        if self._splits is None:
            self._splits = np.asarray(
                self._checked("split", 0, self.n, read=lambda: self.backend.read_strings("split"))
            )
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

    # ----- reading --------------------------------------------------------------------------
    def read(self, name: str, indices: np.ndarray | Sequence[int] | None = None, inner: tuple = ()) -> np.ndarray:
        """Rows ``indices`` (any order) of array ``name`` as numpy; all rows when None.

        ``inner`` selects within each row (e.g. ``(slice(0, 1),)``: the first view of the features).
        A chunk that fails its checksum raises `DamagedChunksError` (one line: the rows and the fix).
        """
        rows = np.asarray(indices, dtype=np.int64) if indices is not None else None
        lo, hi = (0, self.n) if rows is None or rows.size == 0 else (int(rows.min()), int(rows.max()) + 1)
        return self._checked(name, lo, hi, read=lambda: self._read(name, rows, inner))

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
        *,
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
        if self.record.dtype == "bfloat16":
            raw = raw.view(torch.bfloat16)
        return raw.to(device=device, dtype=dtype or raw.dtype)

    def tokens(
        self,
        indices,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        identity_only: bool = False,
    ) -> torch.Tensor:
        """Cached tokens ``[n, V, T, C]`` of rows ``indices`` (``[n, 1, T, C]`` with ``identity_only``), entering the
        encoder's last `tail_tokens` blocks, in the stored dtype unless ``dtype``."""
        if not self.tail_tokens:
            raise FeatcacheError(
                f"{self.path} holds no cached tokens; extract it again with `featcache extract ... --tail-tokens K`"
            )
        raw = torch.from_numpy(self.read("tokens", indices, (slice(0, 1),) if identity_only else ()))
        if self.record.dtype == "bfloat16":
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
        *,
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
        self,
        start: int,
        images: np.ndarray,
        masks: np.ndarray,
        *,
        features: torch.Tensor,
        skipped: Sequence[int] = (),
        tokens: torch.Tensor | None = None,
    ) -> None:
        """Write rows ``[start, start + n)`` (one shard-aligned block) and mark them written, last.

        Rows in ``skipped`` (unreadable files) get the split `SKIPPED`, so no split selects them. ``tokens``
        ``[n, V, T, C]``: the block's cached tokens, which a store with `tail_tokens` needs.
        """
        stop = start + len(images)
        if start % self.shard_size or (stop % self.shard_size and stop != self.n):
            raise ValueError(f"block [{start}, {stop}) is not shard-aligned (shard size {self.shard_size})")
        if (tokens is not None) != bool(self.tail_tokens):
            raise ValueError(f"{self.path}: a block's tokens go with a store that has tail_tokens, and only with one")
        self.backend["images"][start:stop] = images
        self.backend["masks"][start:stop] = masks
        self.backend["features"][start:stop] = self._storable(features)
        if tokens is not None:
            self.backend["tokens"][start:stop] = self._storable(tokens)
        if len(skipped):
            splits = np.asarray(self.splits[start:stop], dtype=object)
            splits[np.asarray(skipped) - start] = SKIPPED
            self.backend.write_strings("split", start, splits)
            self._splits = None
        self.backend.flush()  # the data reaches the file before the flags that vouch for it
        self.backend["written"][start:stop] = np.ones(stop - start, dtype=bool)
        self.backend.flush()

    def _storable(self, values: torch.Tensor) -> np.ndarray:
        """Features or tokens as the store keeps them: its dtype on the CPU (bfloat16 as its uint16 bits)."""
        values = values.detach().to("cpu", FEATURE_DTYPES[self.record.dtype][1]).contiguous()
        return (values.view(torch.uint16) if self.record.dtype == "bfloat16" else values).numpy()

    def save_record(self) -> None:
        """Write `record` (changed in place) back to the store."""
        self.backend.write_attrs(seal(self.record.to_json()))

    def mark_incomplete(self) -> None:
        """Clear the ``complete`` flag: readers refuse the store until extraction finishes it again."""
        self.record.complete = False
        self.save_record()

    def mark_complete(self, extraction: ExtractionRecord) -> None:
        """Set the ``complete`` flag (last), after checking that every sample was written; also records
        ``skipped_bad`` (the ids of samples left out as unreadable) and the ``extraction``'s timing."""
        missing = int((~self.written()).sum())
        if missing:
            raise FeatcacheError(f"{self.path}: {missing} samples were not written; run the same extract command again")
        self.check_whole()
        self._splits = None  # other ranks may have marked rows skipped
        skipped = [self.ids[i] for i in np.flatnonzero(self.splits == SKIPPED)]
        self.record.complete, self.record.skipped_bad, self.record.extraction = True, skipped, extraction
        self.save_record()


def _provenance(path: str | Path, backend: Backend) -> tuple[StoreRecord, list[Damage]]:
    """The store's record and its arrays' layout damage (`layout_damages`); a provenance that cannot be read at all
    (damaged HDF5 attribute, not JSON) is a `MalformedStoreError` with the fix."""
    try:
        meta = backend.read_attrs()
    except FeatcacheError:
        raise
    except Exception as exc:
        raise MalformedStoreError(
            f"{path}: its provenance (the featcache attribute) cannot be read ({type(exc).__name__}: {exc}); "
            f"re-extract the store with `featcache extract ... --out {path} --overwrite`"
        ) from exc
    record = read_record(meta, path)
    return record, layout_damages(backend, record)
