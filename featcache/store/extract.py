"""Run the encoder once over every sample (and flip view) of a dataset and write the store.

Samples are processed in the store's shard-aligned blocks; a block is written whole and then
marked ``written``, so a killed run resumes at the first unwritten block and, since batches never
span blocks, computes exactly what an uninterrupted run would. Under ``torchrun`` each rank takes
every K-th block (disjoint files), rank 0 creates the store and sets ``complete`` last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from featcache.core.context import Context
from featcache.core.errors import BadFileError, FeatcacheError, OptionError
from featcache.core.lock import WriterLock
from featcache.core.runtime import compute_precision, err_console
from featcache.data.layouts import SampleIndex, find_samples
from featcache.models.record import record_of
from featcache.models.spec import AnyEncoder
from featcache.models.tail import check_tail
from featcache.models.vit import Encoder
from featcache.store.backend import backend_kind
from featcache.store.extract_config import ExtractConfig
from featcache.store.fill import ExtractReport, fill
from featcache.store.live_lock import lock_path
from featcache.store.opening import open_for_extraction
from featcache.store.schema import DatasetRecord, Preprocessing, StoreIdentity


def store_identity(
    encoder: AnyEncoder, *, index: SampleIndex, cfg: ExtractConfig, device: torch.device
) -> StoreIdentity:
    """What identifies the store ``cfg`` makes (compared before resuming into an existing one).

    ``compute`` is the encoder's precision on ``device``: a store is not resumed on a device that
    computes in another, so one store never mixes bf16 and float32 features.
    """
    normalisation = (
        "ImageNet mean/std inside the encoder"
        if isinstance(encoder, Encoder)
        else "the model's pretrained_cfg mean/std inside the encoder (see encoder.normalisation)"
    )
    return StoreIdentity(
        encoder=record_of(encoder),
        preprocessing=Preprocessing(
            size=cfg.image_size,
            image_interpolation="bilinear (PIL, antialiased)",
            mask_interpolation="nearest, binarised at > 127",
            normalisation=normalisation,
        ),
        dataset=DatasetRecord(
            layout=index.layout,
            counts=index.counts(),
            split_note=index.split_note,
            split_config=asdict(index.split_config) if index.split_config else None,
            fingerprint=index.fingerprint(),
            skipped=list(index.skipped),
        ),
        # Absolute, so that reading the original masks (--eval-size original) works from any folder.
        dataset_root=str(Path(index.root).resolve()),
        views=cfg.views,
        dtype=cfg.dtype,
        compute=compute_precision(device),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        tail_tokens=cfg.tail_tokens,
    )


def extract(
    cfg: ExtractConfig, *, ctx: Context | None = None, on_block: Callable[[int, int], None] | None = None
) -> ExtractReport:
    """Compute and store the features of every sample of ``cfg.data``; resumes an interrupted store.

    ``ctx``: the device and torchrun ranks (default: `Context.resolve`). ``on_block(start, stop)`` is called on the
    calling thread after each block is written (for progress hooks and tests); blocks are written by
    `featcache.store.writer.BlockWriter` threads, so others may be in flight meanwhile.
    """
    cfg.validate()
    ctx = ctx or Context.resolve()
    if ctx.ranks.world_size > 1 and backend_kind(cfg.out) == "hdf5":
        raise FeatcacheError("several ranks cannot write one HDF5 file; use a .zarr store with torchrun")
    index = _index(cfg, ctx)
    encoder = _encoder(cfg, ctx.device)
    identity = store_identity(encoder, index=index, cfg=cfg, device=ctx.device)
    path = lock_path(cfg.out)
    lock = WriterLock(path, cfg.out) if path is not None and ctx.is_main else None
    if lock is not None:
        lock.acquire()
    try:
        store, resumed = open_for_extraction(cfg, identity=identity, index=index, encoder=encoder, ranks=ctx.ranks)
        with store:
            report = fill(store, index=index, encoder=encoder, cfg=cfg, ctx=ctx, on_block=on_block)
            report.resumed = resumed
        return report
    finally:
        if lock is not None:
            lock.release()
        ctx.close()


def _index(cfg: ExtractConfig, ctx: Context) -> SampleIndex:
    """The dataset's samples, saying on rank 0 which splits were drawn and which files were left out."""
    try:
        index = find_samples(
            cfg.data, cfg.split, skip_unpaired=cfg.skip_unpaired, skip_bad=cfg.skip_bad, strict=cfg.strict
        )
    except BadFileError as exc:
        raise BadFileError(f"{exc}, or pass --skip-bad to leave it out") from exc
    if index.split_note and ctx.is_main:
        err_console.print(f"{cfg.data}: {index.split_note}")
    if index.skipped and ctx.is_main:
        err_console.print(
            f"{cfg.data}: left out {len(index.skipped)} unpaired or unreadable files (recorded in the store): "
            f"{', '.join(index.skipped[:5])}"
        )
    return index


def _encoder(cfg: ExtractConfig, device: torch.device) -> AnyEncoder:
    """The encoder of ``cfg`` on ``device``, in eval mode; refuses an image size that is not a multiple of its
    patch size, and a ``--tail-tokens`` it cannot give."""
    encoder = cfg.encoder_spec().build().to(device).eval()
    if cfg.tail_tokens is not None:
        check_tail(encoder, cfg.tail_tokens)
    p = encoder.patch_size
    if cfg.image_size % p:
        raise OptionError(
            f"--image-size {cfg.image_size} must be a multiple of {p} (the patch size of "
            f"{encoder.arch}); use {max(p, cfg.image_size // p * p)} or {(cfg.image_size // p + 1) * p}"
        )
    return encoder
