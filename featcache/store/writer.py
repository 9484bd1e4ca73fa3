"""Compression and writing of extracted blocks off the main thread, so the encoder never waits for the disk.

The main thread fills a block buffer from a small pool (pinned host memory when the encoder runs on CUDA: the
copies back are non-blocking, one event per block) and hands the block over; writer threads wait for the block's
event, write it (the codecs release the GIL) and give the buffer back. The pool bounds the blocks in flight,
so a slow disk slows the encoder down instead of filling memory. An error in a writer thread stops the others
taking new blocks and is raised again on the main thread, as it was raised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from featcache.store.feature_store import FeatureStore

#: ``write(store, start, rows)``: writes one block (rows: ``images``, ``masks``, ``features`` and ``bad`` lists).
WriteBlock = Callable[[FeatureStore, int, dict], None]


@dataclass
class Block:
    """A block handed to the writers: ``rows`` as `featcache.store.writing.write_or_explain` takes them, ``features``
    holding one slice of ``buffer`` (and ``tokens`` one of ``tokens_buffer``, for a store with cached tokens);
    ``ready``: the event of its last copy back from the GPU (None on the CPU)."""

    start: int
    stop: int
    rows: dict
    buffer: torch.Tensor
    ready: torch.cuda.Event | None
    tokens_buffer: torch.Tensor | None = None


class BlockWriter:
    """``threads`` writer threads over a pool of ``threads + 1`` block buffers ``[shard_size, *feature_shape]`` (and
    as many of ``tokens_shape`` ``[shard_size, V, T, C]``, for a store with cached tokens).

    Use as a context manager: leaving it waits for every submitted block to be written, also when the caller
    leaves on an error or an interrupt (those blocks are computed already: nothing computed is lost), and raises
    the first writer error. Once a writer fails (a full disk), the blocks not yet started are dropped: their
    ``written`` flags stay unset, so the next run computes them.
    """

    def __init__(
        self,
        store: FeatureStore,
        write: WriteBlock,
        threads: int,
        *,
        buffer_shape: tuple[int, ...],
        dtype: torch.dtype,
        pin: bool,
        tokens_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.store, self.write, self.threads = store, write, threads
        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        self._free_tokens: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(threads + 1):
            self._free.put(torch.empty(buffer_shape, dtype=dtype, pin_memory=pin))
            if tokens_shape is not None:
                self._free_tokens.put(torch.empty(tokens_shape, dtype=dtype, pin_memory=pin))
        self._todo: queue.Queue[Block | None] = queue.Queue()
        self._done: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._workers = [
            threading.Thread(target=self._run, name=f"featcache-writer-{i}", daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> BlockWriter:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for _ in self._workers:
            self._todo.put(None)
        for worker in self._workers:
            worker.join()
        if exc is None:
            self.raise_if_failed()

    def buffer(self) -> torch.Tensor:
        """A free block buffer; waits while every buffer is in flight (a failed writer gives its buffer back too)."""
        buffer = self._free.get()
        self.raise_if_failed()
        return buffer

    def tokens_buffer(self) -> torch.Tensor:
        """A free tokens buffer, taken with each `buffer` (both pools hold as many and are given back together)."""
        buffer = self._free_tokens.get()
        self.raise_if_failed()
        return buffer

    def submit(self, block: Block) -> None:
        self.raise_if_failed()
        self._todo.put(block)

    def completed(self) -> list[tuple[int, int]]:
        """The ``(start, stop)`` of the blocks written since the last call, in the order they were written."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _run(self) -> None:
        while (block := self._todo.get()) is not None:
            try:
                if self._error is None:
                    if block.ready is not None:
                        block.ready.synchronize()
                    self.write(self.store, block.start, block.rows)
                    self._done.put((block.start, block.stop))
            except BaseException as exc:  # noqa: BLE001 - raised again on the main thread
                self._fail(exc)
            finally:
                self._free.put(block.buffer)
                if block.tokens_buffer is not None:
                    self._free_tokens.put(block.tokens_buffer)
