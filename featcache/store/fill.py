"""The extraction loop: decode the pending blocks' samples, encode them with their views, hand each full block to
the writer threads, and mark the store complete once every block is written.

Batches never span blocks, so a resumed run computes bit-identical features. A batch's features are copied into
the block's buffer (pinned host memory on CUDA: non-blocking, one CUDA event per block) and the writer threads
compress and write full blocks off the main thread (`featcache.store.writer`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

import featcache.store.writing as writing
from featcache.core.context import Context
from featcache.core.errors import BadFileError, FeatcacheError
from featcache.core.interrupt import deferred_interrupt
from featcache.core.progress import progress_bar
from featcache.core.runtime import err_console, synchronize
from featcache.data.layouts import SampleIndex
from featcache.data.loading import SampleDataset
from featcache.data.workers import worker_batches
from featcache.models.spec import AnyEncoder
from featcache.store.encode import encode_views, encode_views_and_tokens
from featcache.store.extract_config import ExtractConfig
from featcache.store.feature_store import FeatureStore
from featcache.store.schema import FEATURE_DTYPES, ExtractionRecord
from featcache.store.writer import Block, BlockWriter


@dataclass
class ExtractReport:
    """What `featcache.store.extract` did: ``computed`` of ``n`` samples in ``seconds`` (this rank's)."""

    path: str
    n: int
    computed: int
    seconds: float
    images_per_second: float
    resumed: bool
    rank: int = 0


@dataclass
class _MaskLog:
    """Masks that were not 0/255 gray images (binarised) and masks read as stored (0/1), said once at the end."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def say(self) -> None:
        if self.problems:
            err_console.print(
                f"warning: {len(self.problems)} masks were not 0/255 gray images and were binarised at the middle of "
                f"their range (> 127 for 8 bits) (e.g. {', '.join(self.problems[:3])}); --strict refuses them",
                markup=False,
                highlight=False,
            )
        if self.notes:
            err_console.print(
                f"note: {len(self.notes)} masks were read as stored (e.g. {', '.join(self.notes[:3])})",
                markup=False,
                highlight=False,
            )


class _BlockAssembler:
    """Encoded batches gathered into the pending blocks, in order; a full block goes to the writer."""

    def __init__(self, pending: list[tuple[int, int]], writer: BlockWriter, cuda: bool) -> None:
        self.blocks = iter(pending)
        self.current = next(self.blocks, None)
        self.writer, self.cuda = writer, cuda
        self.rows: dict[str, list] = {"images": [], "masks": [], "features": [], "bad": []}
        self.buffer: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None
        self.filled = 0
        self.computed = 0

    def add(self, batch: dict, features: torch.Tensor, bad: list[int], *, tokens: torch.Tensor | None = None) -> None:
        """A batch's uint8 images and masks, its features ``[b, V, L*C, h, w]``, its unreadable rows and, for a store
        with cached tokens, its tokens ``[b, V, T, C]``."""
        if self.buffer is None:
            self.buffer = self.writer.buffer()
            self.tokens = self.writer.tokens_buffer() if tokens is not None else None
        self.buffer[self.filled : self.filled + len(features)].copy_(features, non_blocking=True)
        if tokens is not None:
            self.tokens[self.filled : self.filled + len(tokens)].copy_(tokens, non_blocking=True)
        self.filled += len(features)
        self.rows["images"].append(batch["image"].numpy())
        self.rows["masks"].append(batch["mask"].numpy())
        self.rows["bad"] += bad
        self.computed += len(batch["index"])
        start, stop = self.current
        if self.filled == stop - start:
            self.rows["features"].append(self.buffer[: self.filled])
            if self.tokens is not None:
                self.rows["tokens"] = [self.tokens[: self.filled]]
            ready = torch.cuda.Event() if self.cuda else None
            if ready is not None:
                ready.record()
            self.writer.submit(Block(start, stop, self.rows, self.buffer, ready, self.tokens))
            self.rows = {"images": [], "masks": [], "features": [], "bad": []}
            self.buffer, self.tokens, self.filled = None, None, 0
            self.current = next(self.blocks, None)


def _write_block(store: FeatureStore, start: int, rows: dict[str, list]) -> None:
    writing.write_or_explain(store, start, rows)  # looked up at each call, so a test can replace it


def _pending(store: FeatureStore, ctx: Context) -> list[tuple[int, int]]:
    """This rank's blocks (every K-th) that are not written, or whose chunks went missing (computed again, whole)."""
    written = store.written()
    for start in store.damaged_blocks():
        written[start : start + store.shard_size] = False
    mine = [b for i, b in enumerate(store.blocks()) if i % ctx.ranks.world_size == ctx.ranks.rank]
    return [(a, b) for a, b in mine if not written[a:b].all()]


def _loader(index: SampleIndex, *, cfg: ExtractConfig, pending: list[tuple[int, int]], cuda: bool) -> DataLoader:
    """Decoding workers over the pending blocks, in batches that never span a block."""
    batches = [list(range(s, min(s + cfg.batch_size, b))) for a, b in pending for s in range(a, b, cfg.batch_size)]
    return DataLoader(
        SampleDataset(index.samples, cfg.image_size, catch_errors=True),
        batch_sampler=batches,
        num_workers=cfg.workers,
        pin_memory=cuda,
        persistent_workers=False,
    )


def _screen(batch: dict, *, index: SampleIndex, cfg: ExtractConfig, masks: _MaskLog) -> list[int]:
    """The batch's unreadable samples (refused unless ``--skip-bad``), its masks' problems (refused with
    ``--strict``) and notes; returns the rows left out."""
    bad = []
    for i, error, problem, note in zip(
        batch["index"].tolist(), batch["error"], batch["mask_problem"], batch["mask_note"], strict=True
    ):
        sample = index.samples[i]
        if error and not cfg.skip_bad:
            raise BadFileError(f"{error}, or pass --skip-bad to leave it out")
        if error:
            err_console.print(f"skipping {sample.id}: {error}", markup=False, highlight=False)
            bad.append(i)
        if problem and cfg.strict:
            raise FeatcacheError(
                f"mask {sample.mask} has {problem}; save it as a 0/255 gray PNG, or drop "
                "--strict to binarise it at the middle of its range"
            )
        if problem:
            masks.problems.append(f"{sample.mask.name} ({problem})")
        if note:
            masks.notes.append(f"{sample.mask.name} ({note})")
    return bad


def _report_blocks(writer: BlockWriter, on_block: Callable[[int, int], None] | None) -> None:
    """Call ``on_block`` on the main thread for each block written since the last call."""
    for start, stop in writer.completed():
        if on_block is not None:
            on_block(start, stop)


def fill(
    store: FeatureStore,
    *,
    index: SampleIndex,
    encoder: AnyEncoder,
    cfg: ExtractConfig,
    ctx: Context,
    on_block: Callable[[int, int], None] | None,
) -> ExtractReport:
    """Compute and write this rank's pending blocks of ``store``; rank 0 then marks it complete."""
    pending = _pending(store, ctx)
    cuda = ctx.device.type == "cuda"
    storage = FEATURE_DTYPES[store.record.dtype][1]
    buffer_shape = (store.shard_size, len(store.view_names), store.record.width, *store.record.grid)
    tokens_shape = None
    if store.tail_tokens:
        tokens_shape = (store.shard_size, len(store.view_names), store.record.n_tokens, store.layer_width)
    masks = _MaskLog()
    started = time.perf_counter()
    batches = worker_batches(_loader(index, cfg=cfg, pending=pending, cuda=cuda))  # workers fork before the writers
    writer = BlockWriter(
        store,
        _write_block,
        cfg.writer_threads(),
        buffer_shape=buffer_shape,
        dtype=storage,
        pin=cuda,
        tokens_shape=tokens_shape,
    )
    with (
        deferred_interrupt() as interrupt,  # this thread and the writers share queues: Ctrl-C waits for a batch end
        progress_bar("images", disable=not ctx.progress or not ctx.is_main, remaining=True) as bar,
        writer,
    ):
        task = bar.add_task("extract", total=sum(b - a for a, b in pending))
        blocks = _BlockAssembler(pending, writer, cuda)
        for batch in batches:
            bad = _screen(batch, index=index, cfg=cfg, masks=masks)
            if store.tail_tokens:
                features, tokens = encode_views_and_tokens(
                    encoder, batch["image"], store.view_names, tail=store.tail_tokens, device=ctx.device, dtype=storage
                )
            else:
                features = encode_views(encoder, batch["image"], store.view_names, device=ctx.device, dtype=storage)
                tokens = None
            blocks.add(batch, features, bad, tokens=tokens)
            bar.advance(task, len(batch["index"]))
            _report_blocks(writer, on_block)
            interrupt.check()
    _report_blocks(writer, on_block)
    synchronize(ctx.device)
    seconds = time.perf_counter() - started
    masks.say()
    _complete(store, cfg=cfg, ctx=ctx, computed=blocks.computed, seconds=seconds)
    rate = blocks.computed / seconds if seconds else 0.0
    return ExtractReport(str(cfg.out), store.n, blocks.computed, seconds, rate, False, ctx.ranks.rank)


def _complete(store: FeatureStore, *, cfg: ExtractConfig, ctx: Context, computed: int, seconds: float) -> None:
    """On rank 0, once every rank's blocks are written: the ``complete`` flag and the extraction's timing (a
    resumed run timed only part of the work: the total is scaled from what was measured)."""
    counts = ctx.ranks.gather_objects(computed)
    if not ctx.is_main or store.record.complete:
        return
    total = sum(counts)
    with writing.explain_write_errors(store):
        store.mark_complete(
            ExtractionRecord(
                measured_seconds=round(seconds, 3),
                measured_images=total,
                seconds=round(seconds * store.n / total, 3) if total else None,
                images_per_second=round(total / seconds, 3) if seconds and total else None,
                device=str(ctx.device),
                world_size=ctx.ranks.world_size,
                batch_size=cfg.batch_size,
            )
        )
