"""CUDA graphs for the training loop: a whole pass captured once and replayed, and the gate that keeps a
capture alone on the GPU while other threads train beside it.

A capture must be the only CUDA work in the process while it is underway: a device-wide
synchronisation from another thread (cuDNN's autotuning does one) or a graph freed meanwhile breaks
it. Threads that train side by side (`featcache.train.sizes.train_sizes_from_store`) therefore hold
`GATE` while they work and step out of it between epochs (`CaptureGate.pause`); a capture waits
until every other holder has stepped out and keeps them out until it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from featcache.core.runtime import err_console


class CaptureGate:
    """A shared hold for CUDA work and an exclusive one for captures (a readers-writer lock).

    A thread that holds the shared side (`working`) and starts a capture gives up its own hold for it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._working = 0
        self._capturing = False
        self._held = threading.local()

    def _holds(self) -> bool:
        return getattr(self._held, "value", False)

    def _enter(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._capturing)
            self._working += 1

    def _leave(self) -> None:
        with self._cond:
            self._working -= 1
            self._cond.notify_all()

    @contextmanager
    def working(self) -> Iterator[None]:
        """Hold the shared side for a thread's CUDA work beside other threads."""
        self._enter()
        self._held.value = True
        try:
            yield
        finally:
            self._held.value = False
            self._leave()

    def pause(self) -> None:
        """Step out and back in (between epochs), so a waiting capture can run; a no-op without a hold."""
        if self._holds():
            self._leave()
            self._enter()

    @contextmanager
    def capturing(self) -> Iterator[None]:
        """Hold the exclusive side: no other thread does CUDA work under `working` until the block ends."""
        held = self._holds()
        with self._cond:
            if held:
                self._working -= 1
                self._cond.notify_all()
            self._cond.wait_for(lambda: not self._capturing)
            self._capturing = True
            self._cond.wait_for(lambda: self._working == 0)
        try:
            yield
        finally:
            with self._cond:
                self._capturing = False
                if held:
                    self._working += 1
                self._cond.notify_all()


#: The process's one gate: CUDA graph captures are process-wide.
GATE = CaptureGate()


class EpochGraph:
    """A whole pass (a training epoch, a validation pass) run eagerly once, then as one CUDA graph.

    ``body(*inputs)`` is the pass: device tensors (or None) in, one device tensor out, no host
    synchronisation, the same shapes at every call. The first call runs eagerly: cuDNN's autotuning,
    the optimiser's lazily made state and every allocation happen there, as CUDA graphs need. The
    second captures ``body`` on ``stream`` (the caller's side stream, current during every call) with
    static copies of the inputs and replays it; later calls copy their inputs in and replay. A capture
    is only recorded, not run, so the results are those of the eager loop. A capture that fails (an
    operation CUDA graphs cannot hold) is said in one line and the pass stays eager. Disabled (the
    CPU): every call is the eager ``body``. ``share_pool``: a graph replayed only in turn with this one
    on the same stream, whose memory pool this one reuses. `close` frees the graph.
    """

    def __init__(
        self,
        body: Callable[..., torch.Tensor],
        name: str,
        stream: torch.cuda.Stream | None,
        *,
        enabled: bool,
        share_pool: EpochGraph | None = None,
    ) -> None:
        self.body, self.name, self.stream, self.enabled, self.share_pool = body, name, stream, enabled, share_pool
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor | None, ...] = ()
        self.output: torch.Tensor | None = None
        self._failed: torch.cuda.CUDAGraph | None = None

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        if not self.enabled or self.calls == 1:
            return self.body(*inputs)
        if self.graph is None and not self._capture(inputs):
            return self.body(*inputs)
        for static, value in zip(self.inputs, inputs, strict=True):
            if static is not None:
                static.copy_(value)
        self.graph.replay()
        return self.output.clone()  # the static output is overwritten by the next replay

    def _capture(self, inputs: tuple[torch.Tensor | None, ...]) -> bool:
        static = tuple(x.clone() if x is not None else None for x in inputs)
        graph = torch.cuda.CUDAGraph()
        shared = self.share_pool.graph if self.share_pool is not None else None
        try:
            with (
                GATE.capturing(),
                torch.cuda.graph(
                    graph,
                    pool=shared.pool() if shared is not None else None,
                    stream=self.stream,
                    capture_error_mode="thread_local",
                ),
            ):
                output = self.body(*static)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            message = f"{self.name}: not captured as a CUDA graph ({reason}); it runs without one"
            err_console.print(message, markup=False, highlight=False)
            self.enabled = False
            # Kept until `close`: freeing a graph also frees the cuBLAS workspaces of its stream, which another
            # graph captured on that stream may still use.
            self._failed = graph
            return False
        self.graph, self.inputs, self.output = graph, static, output
        return True

    def close(self) -> None:
        """Free the graph and its static tensors (call when no graph on this stream replays any more)."""
        self.graph = self._failed = self.output = None
        self.inputs = ()
        self.share_pool = None
