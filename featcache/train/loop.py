"""The training loop: one epoch loop for decoder training and pretraining.

`run_epochs` owns what every training run does around its steps: synchronised timing (training
steps apart from validation), resume from a `Checkpointer`, best-epoch selection on validation
loss, stopping on a non-finite loss, and progress. What an epoch trains is an `EpochTask`
(`featcache.train.decoder_fit` for decoders, `featcache.train.pretrain` for denoising pretraining).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from featcache.core.errors import FeatcacheError
from featcache.core.progress import EpochCallback, EpochEnd
from featcache.core.runtime import wait_for_stream
from featcache.train.resume import Checkpointer


@dataclass
class BestEpoch:
    """The epoch with the lowest validation loss so far (0 before any) and the weights kept from it."""

    epoch: int = 0
    val_loss: float = math.inf
    weights: dict = field(default_factory=dict)


@dataclass
class LoopResult:
    """Per run: the best epoch and the loss history; for the whole loop: synchronised seconds, in total and
    the training seconds of each epoch this call ran (a resumed loop's earlier epochs are not in the list)."""

    bests: list[BestEpoch]
    histories: list[dict[str, list[float]]]
    train_seconds: float
    total_seconds: float
    epoch_train_seconds: list[float] = field(default_factory=list)


class EpochTask(Protocol):
    """What `run_epochs` trains: ``runs`` runs at once (K seeds of a grouped decoder, or one)."""

    runs: int

    def train_epoch(self) -> torch.Tensor:
        """One pass over the training data; the mean training loss per run ``[K]``, on the device."""
        ...

    def validate(self) -> torch.Tensor:
        """The mean validation loss per run ``[K]``, on the device."""
        ...

    def snapshot(self, runs: list[int]) -> list[dict]:
        """The weights to keep (detached copies, on the device or the CPU) of each run in ``runs``, at a new
        best epoch."""
        ...

    def state_dict(self) -> dict:
        """Everything that resuming after this epoch needs: models, optimiser, random generators."""
        ...

    def load_state_dict(self, state: dict) -> None: ...

    def divergence(self, epoch: int, runs: list[int]) -> FeatcacheError:
        """The one-line error for runs ``runs`` whose loss is not finite at ``epoch``."""
        ...


def run_epochs(
    task: EpochTask,
    *,
    epochs: int,
    device: torch.device,
    checkpointer: Checkpointer | None = None,
    progress: EpochCallback | None = None,
) -> LoopResult:
    """Train ``task`` for ``epochs`` epochs, validating after each, and keep each run's best epoch.

    ``train_seconds`` covers the training steps only and ``total_seconds`` adds validation, both
    synchronised with the current CUDA stream (other threads' streams are not waited for); the resume
    state is written outside both, at most as often as ``checkpointer`` allows and always after the
    last epoch. A non-finite loss stops the loop with the task's one-line error and deletes the
    resume state (resumed, the run would diverge again). The kept weights are returned on the CPU.
    """
    histories: list[dict[str, list[float]]] = [{"train_loss": [], "val_loss": []} for _ in range(task.runs)]
    bests = [BestEpoch() for _ in range(task.runs)]
    train_seconds = total_seconds = 0.0
    epoch_train_seconds: list[float] = []
    restored_seconds: list[float] | None = []  # the resume state's epochs' seconds (None: it holds none)
    first = 1
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        if "task" not in saved:
            raise FeatcacheError(f"{checkpointer.path} was written by an older featcache; delete it to start again")
        task.load_state_dict(saved["task"])
        histories = saved["histories"]
        bests = [BestEpoch(**b) for b in saved["bests"]]
        train_seconds, total_seconds, first = saved["train_seconds"], saved["total_seconds"], saved["epoch"] + 1
        restored_seconds = saved.get("epoch_seconds")
        _tell_restored(progress, histories, restored_seconds, epochs=epochs, best=bests[0].epoch)
    for epoch in range(first, epochs + 1):
        wait_for_stream(device)
        started = time.perf_counter()
        train_loss = task.train_epoch()
        wait_for_stream(device)
        trained = time.perf_counter()
        val_loss = task.validate()
        losses = torch.stack([train_loss, val_loss]).tolist()  # the one host sync per epoch
        total_seconds += time.perf_counter() - started
        train_seconds += trained - started
        epoch_train_seconds.append(trained - started)
        diverged = [k for k in range(task.runs) if not (math.isfinite(losses[0][k]) and math.isfinite(losses[1][k]))]
        if diverged:
            if checkpointer is not None:
                checkpointer.done()
            raise task.divergence(epoch, diverged)
        improved = [k for k in range(task.runs) if losses[1][k] < bests[k].val_loss]
        for k, weights in zip(improved, task.snapshot(improved) if improved else [], strict=True):
            bests[k] = BestEpoch(epoch, losses[1][k], weights)
        for k, history in enumerate(histories):
            history["train_loss"].append(losses[0][k])
            history["val_loss"].append(losses[1][k])
        if checkpointer is not None and checkpointer.due(epoch, epochs):
            checkpointer.save(
                {
                    "epoch": epoch,
                    "task": task.state_dict(),
                    "histories": histories,
                    "bests": [{"epoch": b.epoch, "val_loss": b.val_loss, "weights": on_cpu(b.weights)} for b in bests],
                    "train_seconds": train_seconds,
                    "total_seconds": total_seconds,
                    "epoch_seconds": None if restored_seconds is None else restored_seconds + epoch_train_seconds,
                }
            )
        if progress is not None:
            progress(_epoch_end(epoch, epochs, losses, best=bests[0].epoch, seconds=trained - started))
    bests = [BestEpoch(b.epoch, b.val_loss, on_cpu(b.weights)) for b in bests]
    return LoopResult(bests, histories, train_seconds, total_seconds, epoch_train_seconds)


def _epoch_end(epoch: int, epochs: int, losses: list[list[float]], *, best: int, seconds: float | None) -> EpochEnd:
    """The report of epoch ``epoch``: ``losses`` = [training losses, validation losses], one per run."""
    train, val = losses
    return EpochEnd(
        epoch, epochs, sum(train) / len(train), sum(val) / len(val), best, tuple(train), tuple(val), seconds
    )


def _tell_restored(
    progress: EpochCallback | None,
    histories: list[dict[str, list[float]]],
    seconds: list[float] | None,
    *,
    epochs: int,
    best: int,
) -> None:
    """Report again the epochs a resumed loop restored (``seconds``: their training seconds, None when the resume
    state holds none): experiment trackers pick their runs up from them, with the epochs that a killed process
    had not yet written out."""
    if progress is None:
        return
    for epoch in range(1, len(histories[0]["train_loss"]) + 1):
        losses = [[h["train_loss"][epoch - 1] for h in histories], [h["val_loss"][epoch - 1] for h in histories]]
        progress(_epoch_end(epoch, epochs, losses, best=best, seconds=seconds[epoch - 1] if seconds else None))


def on_cpu(weights):
    """``weights`` (nested dicts of tensors, or None) with every tensor on the CPU."""
    if isinstance(weights, dict):
        return {name: on_cpu(value) for name, value in weights.items()}
    return weights.cpu() if isinstance(weights, torch.Tensor) else weights
