"""Run the encoder once over every sample (and flip view) of a dataset and write the store.

Samples are processed in the store's shard-aligned blocks; a block is written whole and then
marked ``written``, so a killed run resumes at the first unwritten block and, since batches never
span blocks, computes exactly what an uninterrupted run would. Under ``torchrun`` each rank takes
every K-th block (disjoint files), rank 0 creates the store and sets ``complete`` last.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from featcache.data import SampleDataset, SampleIndex, SplitConfig, find_samples
from featcache.distributed import Distributed
from featcache.errors import BadFileError, FeatcacheError, OptionError, check_at_least, check_choice
from featcache.lock import WriterLock
from featcache.models import AnyEncoder, Encoder, build_encoder, encoder_choice, encoder_provenance
from featcache.progress import progress_bar
from featcache.runtime import autocast, compute_precision, err_console, resolve_device, synchronize
from featcache.store import (
    FEATURE_DTYPES,
    VIEW_FLIPS,
    VIEWS,
    DamagedStoreError,
    FeatureStore,
    MalformedStoreError,
    NotAStoreError,
    backend_kind,
    describe_differences,
    is_url,
    remove_store,
    store_exists,
)
from featcache.writer import Block, BlockWriter


@dataclass
class ExtractConfig:
    """Everything ``featcache extract`` takes.

    ``encoder``: ``imagenet``, ``random`` or a weights file (of the torchvision ``arch``), or ``timm:NAME`` with
    ``encoder_weights`` (None: timm's own pretrained weights; ``random``; a file) and ``model_kwargs``.
    ``layers``: the blocks stored (`featcache.models.resolve_layers`; None: the last, the final normed output).
    ``writers``: threads compressing and writing blocks (None: one for HDF5, whose library serialises every call,
    and up to 4 for Zarr, whose codecs release the GIL).
    """

    data: Path
    out: str
    encoder: str = "imagenet"
    arch: str = "vit_b_16"
    encoder_weights: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    layers: tuple[int, ...] | None = None
    seed: int = 0
    image_size: int = 224
    views: str = "identity"
    dtype: str = "float16"
    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    writers: int | None = None
    shard_size: int = 32
    compressor: str = "auto"
    overwrite: bool = False
    device: str = "auto"
    split: SplitConfig = field(default_factory=SplitConfig)
    skip_bad: bool = False
    skip_unpaired: bool = False
    strict: bool = False

    def validate(self) -> None:
        check_choice("--views", self.views, VIEWS)
        check_choice("--dtype", self.dtype, FEATURE_DTYPES)
        if self.image_size <= 0:
            raise OptionError(f"--image-size {self.image_size} must be positive (a multiple of the patch size)")
        encoder_choice(self.encoder, self.arch, self.encoder_weights, self.model_kwargs)
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--shard-size", self.shard_size, 1)
        check_at_least("--workers", self.workers, 0)
        if self.writers is not None:
            check_at_least("writers", self.writers, 1)
            if self.writers > 1 and backend_kind(self.out) == "hdf5":
                raise OptionError(f"{self.out}: an HDF5 store is written by one thread; use a .zarr store for more")
        backend_kind(self.out)

    def writer_threads(self) -> int:
        if self.writers is not None:
            return self.writers
        return 1 if backend_kind(self.out) == "hdf5" else min(4, os.cpu_count() or 1)


@dataclass
class ExtractReport:
    path: str
    n: int
    computed: int
    seconds: float
    images_per_second: float
    resumed: bool
    rank: int = 0


def store_provenance(
    encoder: AnyEncoder, index: SampleIndex, image_size: int, views: str, dtype: str, device: torch.device
) -> dict:
    """The attributes that identify what a store holds (compared before resuming into it).

    ``compute`` is the encoder's precision on ``device``: a store is not resumed on a device that
    computes in another, so one store never mixes bf16 and float32 features.
    """
    dataset = index.to_dict()
    normalisation = (
        "ImageNet mean/std inside the encoder"
        if isinstance(encoder, Encoder)
        else "the model's pretrained_cfg mean/std inside the encoder (see encoder.normalisation)"
    )
    return {
        "encoder": encoder_provenance(encoder),
        "preprocessing": {
            "size": image_size,
            "image_interpolation": "bilinear (PIL, antialiased)",
            "mask_interpolation": "nearest, binarised at > 127",
            "normalisation": normalisation,
        },
        "dataset": {k: v for k, v in dataset.items() if k != "root"},
        # Absolute, so that reading the original masks (--eval-size original) works from any folder.
        "dataset_root": str(Path(dataset["root"]).resolve()),
        "views": views,
        "dtype": dtype,
        "compute": compute_precision(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def view_batch(images: torch.Tensor, view_names: tuple[str, ...]) -> torch.Tensor:
    """``[B, 3, S, S]`` -> ``[B * V, 3, S, S]``, sample-major (sample 0's views first)."""
    views = [images.flip(VIEW_FLIPS[v]) if VIEW_FLIPS[v] else images for v in view_names]
    return torch.stack(views, dim=1).flatten(0, 1)


@torch.no_grad()
def encode_views(
    encoder: AnyEncoder,
    images_u8: torch.Tensor,
    view_names: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images ``[B, 3, S, S]`` -> features ``[B, V, L*C, S/p, S/p]`` in ``dtype``, on ``device``.

    The cast to ``dtype`` (the store's) goes through float32 wherever it runs, so its result does not depend on
    the device that casts; on a GPU it halves the bytes copied back.
    """
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    x = view_batch(x, view_names)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        feats = encoder(x)
    return feats.float().to(dtype).unflatten(0, (images_u8.shape[0], len(view_names)))


#: HDF5's chunk index, object headers and id strings: measured at under 16 KiB a store plus 450 bytes a
#: sample (synth stores of 20 to 500 samples at 32 to 224 px); the allowance doubles both.
_H5_META_FIXED, _H5_META_PER_SAMPLE = 32 * 1024, 1024
#: Zarr: per chunk a shard-index entry (16 bytes) and a codec header; per store its JSON documents.
_ZARR_PER_CHUNK, _ZARR_META_FIXED = 64, 64 * 1024
#: The files a block of a new Zarr store writes (images, masks, features, written, ids, split, orig_hw).
_ZARR_FILES_PER_BLOCK = 7


@dataclass(frozen=True)
class Room:
    """Bytes a write needs, uncompressed (compression can only make them fewer, so these are upper bounds).

    ``total``: on the disk; ``per_file``: in the largest single file the write grows (`ulimit -f` is per file):
    the store's one file for HDF5, a shard for Zarr.
    """

    total: int
    per_file: int


def room_needed(kind: str, row_bytes: tuple[int, int, int], rows: int, shard_size: int, new_store: bool) -> Room:
    """The room that writing ``rows`` samples (in blocks of ``shard_size``) needs.

    ``row_bytes``: one sample's bytes in ``images`` [3, S, S] uint8, ``masks`` [S, S] uint8 and
    ``features`` [V, C, h, w] at the store's dtype; ``new_store`` adds what creation writes.
    """
    image, mask, features = row_bytes
    data = rows * (image + mask + features + 1)  # + the ``written`` flag
    if kind == "hdf5":
        total = data + rows * _H5_META_PER_SAMPLE + (_H5_META_FIXED if new_store else 0)
        return Room(total, total)
    blocks = -(-rows // shard_size)
    # Each file takes whole blocks of the file system; 4 KiB is the usual size.
    files = blocks * (_ZARR_FILES_PER_BLOCK if new_store else 4) * 4096
    total = data + 3 * rows * _ZARR_PER_CHUNK + files + (_ZARR_META_FIXED if new_store else 0)
    return Room(total, shard_size * (max(image, features) + _ZARR_PER_CHUNK))


def _row_bytes(image_size: int, n_views: int, width: int, grid: Sequence[int], dtype: str) -> tuple[int, int, int]:
    itemsize = np.dtype(FEATURE_DTYPES[dtype][0]).itemsize
    return 3 * image_size**2, image_size**2, n_views * width * grid[0] * grid[1] * itemsize


def _store_row_bytes(store: FeatureStore) -> tuple[int, int, int]:
    meta = store.meta
    return _row_bytes(store.image_size, len(store.view_names), meta["width"], meta["grid"], meta["dtype"])


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _bytes_on_disk(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def check_room(out: str, room: Room, what: str, fix: str, replacing: bool = False) -> None:
    """Refuse (one line with the figures and the fix: ``fix`` for the disk) unless the disk and the
    process's file-size limit (`ulimit -f`, per file) leave ``room`` for writing ``what`` to the store ``out``.

    ``replacing``: the store at ``out`` is deleted first, so its space counts as free. URLs are not checked.
    """
    if is_url(out):
        return
    path = Path(out)
    folder = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    free = shutil.disk_usage(folder).free + (_bytes_on_disk(path) if replacing and path.exists() else 0)
    if room.total > free:
        raise FeatcacheError(
            f"{out} needs up to {_size(room.total)} for {what} but {folder} has {_size(free)} free; {fix}"
        )
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    grown = path.stat().st_size if path.is_file() and not replacing else 0  # an HDF5 store grows its one file
    if limit != resource.RLIM_INFINITY and grown + room.per_file > limit:
        raise FeatcacheError(
            f"{out} needs files of up to {_size(grown + room.per_file)} for {what} but this process may write "
            f"files of at most {_size(limit)} (`ulimit -f`); raise that limit, then run the same command again"
        )


_START_FIX = "free some space or choose another --out"
_RESUME_FIX = "free some space, then run the same command again: the blocks already written are kept"


def _open_or_create(
    cfg: ExtractConfig, prov: dict, index: SampleIndex, encoder: AnyEncoder, dist: Distributed
) -> tuple[FeatureStore, bool]:
    """Rank 0 decides between resume, refusal, overwrite and creation; other ranks open after it.

    A refusal on rank 0 reaches every rank (broadcast), so none waits for a store that never comes.
    """
    if not dist.is_main:
        refusal = dist.broadcast_object(None)
        if refusal:
            raise FeatcacheError(refusal)
        return FeatureStore.open(cfg.out, writable=True, allow_incomplete=True), True
    try:
        store, resumed = _decide(cfg, prov, index, encoder)
    except FeatcacheError as exc:
        dist.broadcast_object(str(exc))
        raise
    dist.broadcast_object("")
    return store, resumed


def _decide(cfg: ExtractConfig, prov: dict, index: SampleIndex, encoder: AnyEncoder) -> tuple[FeatureStore, bool]:
    samples = index.samples
    grid = (cfg.image_size // encoder.patch_size,) * 2
    kind = backend_kind(cfg.out)
    row_bytes = _row_bytes(cfg.image_size, len(VIEWS[cfg.views]), encoder.width, grid, cfg.dtype)
    new_room = room_needed(kind, row_bytes, len(samples), cfg.shard_size, new_store=True)
    what = f"{len(samples)} samples"
    if store_exists(cfg.out) and cfg.overwrite:
        check_room(cfg.out, new_room, what, _START_FIX, replacing=True)
        _remove_if_ours(cfg.out)
    if store_exists(cfg.out):
        try:
            store = FeatureStore.open(cfg.out, writable=True, allow_incomplete=True)
        except NotAStoreError as exc:
            raise NotAStoreError(
                f"{cfg.out} is there and is not a featcache store; choose another --out or move it away"
            ) from exc
        differences = describe_differences(store.meta, prov)
        if differences:
            store.close()
            raise FeatcacheError(
                f"{cfg.out} holds another extraction ({'; '.join(differences[:3])}); "
                f"pass --overwrite to replace it or choose another --out"
            )
        damaged = store.damaged_blocks()
        if damaged:
            err_console.print(
                f"{cfg.out}: {len(damaged)} written blocks lost chunks (rows from {damaged[0]}); computing them again",
                markup=False,
                highlight=False,
            )
            store.update_meta(complete=False)  # set again only once they are rewritten
        left = int((~store.written()).sum()) + sum(min(store.shard_size, store.n - a) for a in damaged)
        try:
            check_room(
                cfg.out,
                room_needed(kind, _store_row_bytes(store), left, store.shard_size, new_store=False),
                f"the {left} samples left",
                _RESUME_FIX,
            )
        except FeatcacheError:
            store.close()
            raise
        return store, True
    check_room(cfg.out, new_room, what, _START_FIX)
    store = None
    try:
        store = FeatureStore.create(
            cfg.out,
            prov,
            [s.id for s in samples],
            [s.split for s in samples],
            np.array([s.orig_hw for s in samples]),
            encoder.width,
            grid,
            cfg.shard_size,
            cfg.compressor,
        )
        _raise_if_write_failed(store)
    except OSError as exc:
        # Nothing was computed yet: what creation left is removed, not kept as a broken store.
        if store is not None:
            store.close()
        remove_store(cfg.out)
        raise FeatcacheError(
            f"cannot create {cfg.out} ({exc.strerror or exc}); {_START_FIX}, or fix its permissions"
        ) from exc
    return store, False


def _remove_if_ours(path: str) -> None:
    """``--overwrite`` deletes a featcache store, never an unrelated file or folder."""
    try:
        FeatureStore.open(path, allow_incomplete=True).close()
    except (DamagedStoreError, MalformedStoreError):
        pass  # ours, though unreadable or malformed: replacing it is what --overwrite is for
    except FeatcacheError as exc:
        raise FeatcacheError(
            f"{path} exists and is not a featcache store; --overwrite only replaces stores: move it away"
        ) from exc
    remove_store(path)


def _lock_path(out: str) -> Path | None:
    if is_url(out):
        return None
    path = Path(out)
    return path.with_name(path.name + ".lock")


def extract(
    cfg: ExtractConfig, progress: bool = True, on_block: Callable[[int, int], None] | None = None
) -> ExtractReport:
    """Compute and store the features of every sample of ``cfg.data``; resumes an interrupted store.

    ``on_block(start, stop)`` is called on the calling thread after each block is written (for progress hooks and
    tests); blocks are written by `featcache.writer.BlockWriter` threads, so others may be in flight meanwhile.
    """
    cfg.validate()
    dist = Distributed.from_env(cfg.device)
    device = dist.device if dist.world_size > 1 else resolve_device(cfg.device)
    if dist.world_size > 1 and backend_kind(cfg.out) == "hdf5":
        raise FeatcacheError("several ranks cannot write one HDF5 file; use a .zarr store with torchrun")
    try:
        index = find_samples(
            cfg.data, cfg.split, skip_unpaired=cfg.skip_unpaired, skip_bad=cfg.skip_bad, strict=cfg.strict
        )
    except BadFileError as exc:
        raise BadFileError(f"{exc}, or pass --skip-bad to leave it out") from exc
    if index.split_note and dist.is_main:
        err_console.print(f"{cfg.data}: {index.split_note}")
    if index.skipped and dist.is_main:
        err_console.print(
            f"{cfg.data}: left out {len(index.skipped)} unpaired or unreadable files (recorded in the store): "
            f"{', '.join(index.skipped[:5])}"
        )
    arch, weights = encoder_choice(cfg.encoder, cfg.arch, cfg.encoder_weights, cfg.model_kwargs)
    encoder = build_encoder(arch, weights, seed=cfg.seed, layers=cfg.layers, model_kwargs=cfg.model_kwargs)
    encoder = encoder.to(device).eval()
    if cfg.image_size % encoder.patch_size:
        p = encoder.patch_size
        raise OptionError(
            f"--image-size {cfg.image_size} must be a multiple of {p} (the patch size of "
            f"{encoder.arch}); use {max(p, cfg.image_size // p * p)} or {(cfg.image_size // p + 1) * p}"
        )
    prov = store_provenance(encoder, index, cfg.image_size, cfg.views, cfg.dtype, device)
    lock_path = _lock_path(cfg.out)
    lock = WriterLock(lock_path, cfg.out) if lock_path is not None and dist.is_main else None
    if lock is not None:
        lock.acquire()
    try:
        store, resumed = _open_or_create(cfg, prov, index, encoder, dist)
        with store:
            report = _fill(store, index, encoder, cfg, device, dist, progress, on_block)
            report.resumed = resumed
        return report
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def _raise_if_write_failed(store: FeatureStore) -> None:
    """Raise the `OSError` of a write that an HDF5 store's file dropped (see `featcache.store._GuardedFile`)."""
    guard = getattr(store.backend, "guard", None)
    if guard is not None:
        guard.raise_if_failed()


@contextmanager
def explain_write_errors(store: FeatureStore) -> Iterator[None]:
    """Turn a failed write to ``store`` (a full disk, a read-only target) into one line with the fix."""
    try:
        yield
        _raise_if_write_failed(store)
    except OSError as exc:
        raise FeatcacheError(
            f"cannot write {store.path} ({exc.strerror or exc}); free disk space or fix its permissions, then run the "
            "same command again: the blocks already written are kept"
        ) from exc


def write_or_explain(store: FeatureStore, start: int, rows: dict[str, list]) -> None:
    """Write one block; the room is checked first, so a disk that filled during the run stops the
    extraction before the write, and a write that fails anyway ends with the fix, the store still resumable."""
    n = sum(len(x) for x in rows["images"])
    room = room_needed(store.meta["backend"], _store_row_bytes(store), n, store.shard_size, new_store=False)
    check_room(str(store.path), room, f"samples {start} to {start + n - 1}", _RESUME_FIX)
    features = rows["features"]
    with explain_write_errors(store):
        store.write_block(
            start,
            np.concatenate(rows["images"]),
            np.concatenate(rows["masks"]),
            features[0] if len(features) == 1 else torch.cat(features),
            skipped=rows["bad"],
        )


def _write_block(store: FeatureStore, start: int, rows: dict[str, list]) -> None:
    write_or_explain(store, start, rows)  # looked up at each call, so a test can replace it


def _report_blocks(writer: BlockWriter, on_block: Callable[[int, int], None] | None) -> None:
    """Call ``on_block`` on the main thread for each block written since the last call."""
    for start, stop in writer.completed():
        if on_block is not None:
            on_block(start, stop)


def _fill(
    store: FeatureStore,
    index: SampleIndex,
    encoder: AnyEncoder,
    cfg: ExtractConfig,
    device: torch.device,
    dist: Distributed,
    progress: bool,
    on_block: Callable[[int, int], None] | None,
) -> ExtractReport:
    written = store.written()
    for start in store.damaged_blocks():  # blocks whose chunks went missing are computed again, whole
        written[start : start + store.shard_size] = False
    mine = [b for i, b in enumerate(store.blocks()) if i % dist.world_size == dist.rank]
    pending = [(a, b) for a, b in mine if not written[a:b].all()]
    # Batches never span blocks, so a resumed run computes bit-identical features.
    batches = [list(range(s, min(s + cfg.batch_size, b))) for a, b in pending for s in range(a, b, cfg.batch_size)]
    loader = DataLoader(
        SampleDataset(index.samples, cfg.image_size, catch_errors=True),
        batch_sampler=batches,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    view_names = store.view_names
    storage = FEATURE_DTYPES[store.meta["dtype"]][1]
    buffer_shape = (store.shard_size, len(view_names), store.meta["width"], *store.meta["grid"])
    computed = 0
    mask_problems: list[str] = []
    mask_notes: list[str] = []
    block_iter = iter(pending)
    current = next(block_iter, None)
    block_rows: dict[str, list] = {"images": [], "masks": [], "features": [], "bad": []}
    buffer, filled = None, 0
    started = time.perf_counter()
    batch_iter = iter(loader)  # the workers fork here, before the writer threads start
    writer = BlockWriter(store, _write_block, cfg.writer_threads(), buffer_shape, storage, pin=device.type == "cuda")
    with (
        progress_bar("images", disable=not progress or not dist.is_main, remaining=True) as bar,
        writer,
    ):
        task = bar.add_task("extract", total=sum(b - a for a, b in pending))
        for batch in batch_iter:
            for i, error, problem, note in zip(
                batch["index"].tolist(), batch["error"], batch["mask_problem"], batch["mask_note"], strict=True
            ):
                if error and not cfg.skip_bad:
                    raise BadFileError(f"{error}, or pass --skip-bad to leave it out")
                if error:
                    err_console.print(f"skipping {index.samples[i].id}: {error}", markup=False, highlight=False)
                    block_rows["bad"].append(i)
                if problem:
                    if cfg.strict:
                        raise FeatcacheError(
                            f"mask {index.samples[i].mask} has {problem}; save it as a 0/255 gray PNG, or drop "
                            "--strict to binarise it at the middle of its range"
                        )
                    mask_problems.append(f"{index.samples[i].mask.name} ({problem})")
                if note:
                    mask_notes.append(f"{index.samples[i].mask.name} ({note})")
            if buffer is None:
                buffer = writer.buffer()
            feats = encode_views(encoder, batch["image"], view_names, device, storage)
            buffer[filled : filled + len(feats)].copy_(feats, non_blocking=True)
            filled += len(feats)
            block_rows["images"].append(batch["image"].numpy())
            block_rows["masks"].append(batch["mask"].numpy())
            computed += len(batch["index"])
            bar.advance(task, len(batch["index"]))
            start, stop = current
            if filled == stop - start:
                block_rows["features"].append(buffer[:filled])
                ready = torch.cuda.Event() if device.type == "cuda" else None
                if ready is not None:
                    ready.record()
                writer.submit(Block(start, stop, block_rows, buffer, ready))
                block_rows = {"images": [], "masks": [], "features": [], "bad": []}
                buffer, filled = None, 0
                current = next(block_iter, None)
            _report_blocks(writer, on_block)
    _report_blocks(writer, on_block)
    synchronize(device)
    seconds = time.perf_counter() - started
    if mask_problems:
        err_console.print(
            f"warning: {len(mask_problems)} masks were not 0/255 gray images and were binarised at the middle of "
            f"their range (> 127 for 8 bits) "
            f"(e.g. {', '.join(mask_problems[:3])}); --strict refuses them",
            markup=False,
            highlight=False,
        )
    if mask_notes:
        err_console.print(
            f"note: {len(mask_notes)} masks were read as stored (e.g. {', '.join(mask_notes[:3])})",
            markup=False,
            highlight=False,
        )
    counts = dist.gather_objects(computed)
    if dist.is_main and not store.meta.get("complete"):
        # A resumed run timed only part of the work: the total is scaled from what was measured.
        total = sum(counts)
        with explain_write_errors(store):
            store.mark_complete(
                extraction={
                    "measured_seconds": round(seconds, 3),
                    "measured_images": total,
                    "seconds": round(seconds * store.n / total, 3) if total else None,
                    "images_per_second": round(total / seconds, 3) if seconds and total else None,
                    "device": str(device),
                    "world_size": dist.world_size,
                    "batch_size": cfg.batch_size,
                }
            )
    return ExtractReport(
        str(cfg.out), store.n, computed, seconds, computed / seconds if seconds else 0.0, False, dist.rank
    )
