"""A sweep's sizes trained from one read of the store, side by side on one GPU.

The protocol's small sizes train a few images per step, too little to fill a GPU even as CUDA
graphs, so `train_sizes_from_store` trains every size's group in its own thread and CUDA stream at the
same time, all reading one copy of the store's rows (`featcache.train.rows.load_splits`). On the CPU the
groups run one after another.
"""

from __future__ import annotations

import gc
import queue
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import torch

from featcache.core.context import Context
from featcache.core.interrupt import InterruptPoint, deferred_interrupt
from featcache.core.progress import EpochCallback, EpochEnd
from featcache.core.runtime import err_console
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.graphs import GATE
from featcache.train.protocol import Plan
from featcache.train.rows import load_splits, select_rows
from featcache.train.run import RunOutput, train_group_from_store

#: At most this many groups train at once (the protocol has six sizes); the rest wait for a free worker.
MAX_SIDE_BY_SIDE = 8


@dataclass
class SizeGroup:
    """One group of a sweep: the runs of one size trained together (as `train_group_from_store` does) and its
    plan; ``row`` makes its progress callback when it starts (None: no progress)."""

    plan: Plan
    cfgs: list[TrainConfig]
    row: Callable[[], EpochCallback] | None = None


def train_sizes_from_store(
    store: FeatureStore,
    groups: list[SizeGroup],
    *,
    ctx: Context,
    done: Callable[[int, list[RunOutput]], None] | None = None,
    concurrent: bool | None = None,
) -> list[list[RunOutput]]:
    """C mode, several groups (a sweep's sizes) from one read of the store (`load_splits`): each group's outputs,
    also handed to ``done(index, outputs)`` in the calling thread as each group finishes.

    ``concurrent`` (None: on CUDA): the groups train at the same time on one GPU (at most `MAX_SIDE_BY_SIDE`),
    each in a thread with its own CUDA stream, so the small sizes, which alone leave most of the GPU idle,
    overlap the large one. Each group's results are those it gets alone (its own seeds, subsets, generators,
    initial weights; `fit_group`), and its ``train_seconds`` are measured on its own stream while the others
    run (waits for another size's CUDA graph capture included). Groups must share augmentation and
    layers. A group that runs out of GPU memory beside the others trains again after them, alone. Ctrl-C (or
    a group's error) stops the other groups at the end of their current epoch. ``ctx``: the device and CUDA graphs.
    """
    device = ctx.device
    runs = [(c, select_rows(store, g.plan, c.seed, train_ids=c.train_ids)) for g in groups for c in g.cfgs]
    data = load_splits(store, runs, device)
    concurrent = device.type == "cuda" and len(groups) > 1 if concurrent is None else concurrent
    outputs: list[list[RunOutput] | None] = [None] * len(groups)
    stop = threading.Event()

    def train(i: int) -> list[RunOutput]:
        row = groups[i].row() if groups[i].row is not None else None

        def progress(end: EpochEnd) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            if row is not None:
                row(end)
            GATE.pause()  # between epochs: where another thread's CUDA graph capture may run

        group = groups[i]
        return train_group_from_store(store, group.cfgs, ctx=ctx, plan=group.plan, progress=progress, data=data)

    def finish(i: int, result: list[RunOutput]) -> None:
        outputs[i] = result
        if done is not None:
            done(i, result)

    if not concurrent:
        for i in range(len(groups)):
            finish(i, train(i))
        return outputs
    out_of_memory = _side_by_side(groups, train=train, finish=finish, stop=stop, device=device)
    if out_of_memory:
        gc.collect()  # what the failed threads left in reference cycles, before the cache is emptied
        torch.cuda.empty_cache()
        sizes = ", ".join(str(groups[i].plan.size) for i in out_of_memory)
        err_console.print(f"size {sizes}: out of GPU memory beside the other sizes; training again alone")
        for i in sorted(out_of_memory):
            finish(i, train(i))
    return outputs


def _side_by_side(
    groups: list[SizeGroup],
    *,
    train: Callable[[int], list[RunOutput]],
    finish: Callable[[int, list[RunOutput]], None],
    stop: threading.Event,
    device: torch.device,
) -> list[int]:
    """Train every group in its own thread and CUDA stream, largest first, handing each result to ``finish`` as it
    comes; returns the groups that ran out of GPU memory (to train again alone). ``stop`` is set on Ctrl-C or a
    group's error, so that the others stop at their next epoch."""
    torch.cuda.current_stream(device).synchronize()  # the shared data is on the device before any thread reads it
    # A fixed set of streams, one per worker for its lifetime: torch hands streams out round robin from a small
    # pool, and freeing a graph frees its stream's cuBLAS workspaces, so two live tasks must never share one.
    workers = min(len(groups), MAX_SIDE_BY_SIDE)
    streams: queue.SimpleQueue[torch.cuda.Stream] = queue.SimpleQueue()
    for _ in range(workers):
        streams.put(torch.cuda.Stream(device))

    def on_own_stream(i: int) -> list[RunOutput]:
        stream = streams.get()
        try:
            with GATE.working(), torch.cuda.stream(stream):
                result = train(i)
                stream.synchronize()
        finally:
            streams.put(stream)
        return result

    # Largest first: it bounds the sweep's wall time, so it should not wait behind the others' starts.
    order = sorted(range(len(groups)), key=lambda i: -groups[i].plan.size * groups[i].plan.epochs)
    # Ctrl-C held back while this thread waits on the futures' locks, which the workers take too
    # (`featcache.core.interrupt`); the pool's end waits for the workers, which stop at their next epoch.
    with deferred_interrupt() as interrupt, ThreadPoolExecutor(workers, thread_name_prefix="featcache-size") as pool:
        futures = {pool.submit(on_own_stream, i): i for i in order}
        return gather(futures, finish=finish, stop=stop, interrupt=interrupt)


def gather(
    futures: dict[Future, int],
    *,
    finish: Callable[[int, list[RunOutput]], None],
    stop: threading.Event,
    interrupt: InterruptPoint,
) -> list[int]:
    """Hand each group's result to ``finish`` as it comes (``futures``: future to group index); returns the groups
    that ran out of GPU memory. On Ctrl-C (seen by ``interrupt`` within half a second) or a group's error, ``stop``
    is set, so that the others stop at their next epoch instead of running on, and the error is raised."""
    out_of_memory = []
    pending = set(futures)
    try:
        while pending:
            finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                try:
                    finish(futures[future], future.result())
                except torch.OutOfMemoryError as error:
                    # The traceback holds the failed group's frames, hence its tensors: let them go before the retry.
                    traceback.clear_frames(error.__traceback__)
                    out_of_memory.append(futures[future])
            interrupt.check()
    except BaseException:
        stop.set()
        raise
    finally:
        futures.clear()
    return out_of_memory
