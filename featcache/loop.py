"""The training loop: one epoch loop for decoder training and pretraining, and the grouped decoder fit.

`run_epochs` owns what every training run does around its steps: synchronised timing (training
steps apart from validation), resume from a `Checkpointer`, best-epoch selection on validation
loss, stopping on a non-finite loss, and progress. What an epoch trains is an `EpochTask`.
`fit_group` is the task of K decoders trained at once as one grouped network; `GroupedSGD` gives
each of them its own learning rate and weight decay (a hyperparameter grid in one pass).

On CUDA a task's training epoch and validation pass each run as one CUDA graph
(`featcache.graphs.EpochGraph`), captured after a first eager epoch: one launch per epoch instead of
thousands of small kernels, which is what bounds the small sizes of the protocol. The CPU path is
the eager one, unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import FeatcacheError
from featcache.graphs import EpochGraph
from featcache.models import group_state
from featcache.progress import EpochCallback
from featcache.protocol import Plan
from featcache.resume import Checkpointer
from featcache.runtime import autocast, wait_for_stream
from featcache.sources import FeatureSource, flip_per_sample, stacked

if TYPE_CHECKING:
    from featcache.train import TrainConfig


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
    first = 1
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        if "task" not in saved:
            raise FeatcacheError(f"{checkpointer.path} was written by an older featcache; delete it to start again")
        task.load_state_dict(saved["task"])
        histories = saved["histories"]
        bests = [BestEpoch(**b) for b in saved["bests"]]
        train_seconds, total_seconds, first = saved["train_seconds"], saved["total_seconds"], saved["epoch"] + 1
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
                }
            )
        if progress is not None:
            progress(epoch, epochs, sum(losses[0]) / task.runs, sum(losses[1]) / task.runs, bests[0].epoch)
    bests = [BestEpoch(b.epoch, b.val_loss, on_cpu(b.weights)) for b in bests]
    return LoopResult(bests, histories, train_seconds, total_seconds, epoch_train_seconds)


def on_cpu(weights):
    """``weights`` (nested dicts of tensors, or None) with every tensor on the CPU."""
    if isinstance(weights, dict):
        return {name: on_cpu(value) for name, value in weights.items()}
    return weights.cpu() if isinstance(weights, torch.Tensor) else weights


@dataclass
class RunInputs:
    """One run of a group: its seed, its training and validation features and masks, and its SGD learning rate
    and weight decay (None: the group's ``TrainConfig``'s).

    Masks are uint8 ``[n, S, S]`` (training) and ``[m, S, S]`` (validation) on the training device.
    """

    seed: int
    train_source: FeatureSource
    train_masks: torch.Tensor
    val_source: FeatureSource
    val_masks: torch.Tensor
    lr: float | None = None
    weight_decay: float | None = None


class GroupedSGD(torch.optim.Optimizer):
    """SGD with momentum over a grouped network whose K groups each have their own learning rate and weight decay.

    Every parameter is its K groups' tensors concatenated along dim 0 (`featcache.models.stack_states`),
    so group k's slice of a parameter ``p`` of ``K * c`` rows is rows ``k*c .. (k+1)*c``. The update is
    `torch.optim.SGD`'s (no dampening, not Nesterov), with per-row factors in place of its scalars:
    ``g = grad + wd_k * p``; ``b = g`` at the first step, then ``b = momentum * b + g``; ``p -= lr_k * b``.
    A group therefore follows exactly the path a separate `torch.optim.SGD(lr_k, momentum, wd_k)` run takes,
    up to floating-point rounding. The state (``momentum_buffer`` per parameter) is the same as SGD's.
    """

    def __init__(self, params, lrs: list[float], weight_decays: list[float], momentum: float) -> None:
        if len(lrs) != len(weight_decays):
            raise ValueError(f"{len(lrs)} learning rates for {len(weight_decays)} weight decays")
        super().__init__(params, {"lrs": list(lrs), "weight_decays": list(weight_decays), "momentum": momentum})
        self._factors: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] = {}

    def _row_factors(self, p: torch.Tensor, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(-lr, wd) of each element of ``p``: tensors of ``p``'s shape and memory layout, as the fast path of
        the multi-tensor ops needs (they would fall back to one kernel per tensor to broadcast)."""
        if p not in self._factors:
            k_groups = len(group["lrs"])
            if p.ndim == 0 or p.shape[0] % k_groups:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not {k_groups} groups along dim 0")
            shape = (-1,) + (1,) * (p.ndim - 1)

            def rows(values: list[float]) -> torch.Tensor:
                per_group = torch.tensor(values, dtype=p.dtype, device=p.device)
                return torch.empty_like(p).copy_(per_group.repeat_interleave(p.shape[0] // k_groups).view(shape))

            self._factors[p] = (rows([-lr for lr in group["lrs"]]), rows(group["weight_decays"]))
        return self._factors[p]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError("GroupedSGD takes no closure")
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            factors = [self._row_factors(p, group) for p in params]
            # Multi-tensor ops: a handful of kernels per step, not four per parameter.
            grads = torch._foreach_addcmul([p.grad for p in params], [wd for _, wd in factors], params)
            if group["momentum"] != 0:
                states = [self.state[p] for p in params]
                started = [k for k, state in enumerate(states) if "momentum_buffer" in state]
                for k, state in enumerate(states):  # a parameter's first step: the buffer is its gradient
                    state.setdefault("momentum_buffer", grads[k])
                if started:
                    buffers = [states[k]["momentum_buffer"] for k in started]
                    torch._foreach_mul_(buffers, group["momentum"])
                    torch._foreach_add_(buffers, [grads[k] for k in started])
                grads = [state["momentum_buffer"] for state in states]
            torch._foreach_addcmul_(params, grads, [neg_lr for neg_lr, _ in factors])


@dataclass
class FitResult:
    """One run's best epoch (weights ``{"decoder": ..., "encoder": ... or None}``), history and the group's seconds
    (in total, and the training seconds of each epoch this call ran)."""

    best: BestEpoch
    history: dict[str, list[float]]
    train_seconds: float
    total_seconds: float
    epoch_train_seconds: list[float] = field(default_factory=list)
    cuda_graphs: bool = False  # whether its training epochs were replayed as a CUDA graph


@torch.no_grad()
def eval_losses(
    decoder: nn.Module, sources: list[FeatureSource], masks: list[torch.Tensor], batch: int, device: torch.device
) -> torch.Tensor:
    """Mean per-pixel BCE of each group over its whole split, in eval mode: a device tensor ``[K]``."""
    m = len(masks[0])
    total = torch.zeros(len(sources), device=device)
    for start in range(0, m, batch):
        rows = torch.arange(start, min(start + batch, m), device=device)
        with autocast(device):
            logits = decoder(stacked(sources, [rows] * len(sources), None))
        target = torch.stack([mk[rows] for mk in masks], dim=1).float()
        total += F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(dim=(0, 2, 3))
    return total / masks[0].numel()


@torch.no_grad()
def predict_logits(
    decoder: nn.Module, sources: list[FeatureSource], n: int, batch: int, device: torch.device
) -> torch.Tensor:
    """Logits ``[n, K, S, S]`` float32 on the CPU, in eval mode (K = len(sources) = the decoder's groups)."""
    decoder.eval()
    for src in sources:
        src.train(False)
    out = []
    for start in range(0, n, batch):
        rows = torch.arange(start, min(start + batch, n), device=device)
        with autocast(device):
            out.append(decoder(stacked(sources, [rows] * len(sources), None)).float().cpu())
    return torch.cat(out)


class _DecoderTask:
    """K decoders as one grouped network (``decoder`` has ``groups=K``), each run on its own inputs.

    Each run keeps its own subset, random stream (batch order, views), batch statistics (its own
    BatchNorm channels), optimiser state (SGD is elementwise, and the summed loss gives each group
    exactly its own gradient), learning rate and weight decay, and model selection, so the K results
    equal K separate runs up to floating-point order. Runs that share one learning rate and weight
    decay train with `torch.optim.SGD` itself; a grid of them with `GroupedSGD`.
    """

    def __init__(
        self,
        decoder: nn.Module,
        runs: list[RunInputs],
        plan: Plan,
        cfg: TrainConfig,
        device: torch.device,
        graphs: bool | None = None,
    ) -> None:
        self.decoder, self.inputs, self.plan, self.cfg, self.device = decoder, runs, plan, cfg, device
        self.runs = len(runs)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
        decoder.to(memory_format=torch.channels_last)
        self.encoder = getattr(runs[0].train_source, "encoder", None)
        self.trains_encoder = self.encoder is not None and bool(runs[0].train_source.parameters())
        if self.trains_encoder and self.runs > 1:
            raise ValueError("runs that train the encoder cannot be grouped")
        params = list(decoder.parameters()) + runs[0].train_source.parameters()
        self.lrs = [cfg.lr if r.lr is None else r.lr for r in runs]
        self.weight_decays = [cfg.weight_decay if r.weight_decay is None else r.weight_decay for r in runs]
        self.grid = len(set(zip(self.lrs, self.weight_decays, strict=True))) > 1
        if not self.grid:
            # Fused on CUDA: the whole update in one kernel. The CPU keeps the default implementation.
            self.optimiser = torch.optim.SGD(
                params,
                lr=self.lrs[0],
                momentum=cfg.momentum,
                weight_decay=self.weight_decays[0],
                fused=device.type == "cuda" or None,
            )
        else:
            self.optimiser = GroupedSGD(params, self.lrs, self.weight_decays, cfg.momentum)
        # Batch order and views are drawn on the training device: no host round trip per step.
        self.generators = [torch.Generator(device=device).manual_seed(r.seed) for r in runs]
        self.n = len(runs[0].train_masks)
        graphs = device.type == "cuda" if graphs is None else graphs
        if graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        # A stream of the task's own (the caller's, when that is not the default one: a concurrent sweep gives each
        # worker one): CUDA graphs are captured off the legacy default stream, and their eager first pass runs on
        # the stream they are captured on, as torch's documentation asks.
        self.stream = None
        if graphs:
            caller = torch.cuda.current_stream(device)
            self.stream = caller if caller != torch.cuda.default_stream(device) else torch.cuda.Stream(device)
        label = f"size {plan.size}"
        self.train_pass = EpochGraph(self._train_steps, f"training ({label})", self.stream, graphs)
        # Validation replays only after training, on the same stream: it can reuse the training graph's memory.
        self.val_pass = EpochGraph(self._val_losses, f"validation ({label})", self.stream, graphs, self.train_pass)

    @contextmanager
    def _on_stream(self) -> Iterator[None]:
        """Run the block on the task's stream (after the caller's queued work), then make the caller's wait."""
        if self.stream is None:
            yield
            return
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def close(self) -> None:
        """Free the CUDA graphs, once nothing of this task runs on its stream any more."""
        try:
            if self.stream is not None:
                self.stream.synchronize()
        finally:  # after a CUDA error too, which the synchronisation may raise again
            self.val_pass.close()
            self.train_pass.close()

    def train_epoch(self) -> torch.Tensor:
        self.decoder.train()
        for r in self.inputs:
            r.train_source.train(True)
        n, device = self.n, self.device
        with self._on_stream():
            orders = torch.stack([torch.randperm(n, generator=g, device=device) for g in self.generators])
            views = None
            if self.cfg.augment != "none":
                views = torch.stack([torch.randint(0, 4, (n,), generator=g, device=device) for g in self.generators])
            return self.train_pass(orders, views)

    def _train_steps(self, orders: torch.Tensor, all_views: torch.Tensor | None) -> torch.Tensor:
        """One epoch of steps over each run's batch order ``orders`` ``[K, n]`` and views ``all_views`` ``[K, n]``
        (or None): the mean training loss per run ``[K]``."""
        n, batch, device = self.n, self.plan.batch_size, self.device
        sources = [r.train_source for r in self.inputs]
        epoch_loss = torch.zeros(self.runs, device=device)
        for start in range(0, n, batch):
            rows = list(orders[:, start : start + batch].unbind())
            views = [None] * self.runs if all_views is None else list(all_views[:, start : start + batch].unbind())
            target = torch.stack(
                [
                    flip_per_sample(r.train_masks[i], v) if v is not None else r.train_masks[i]
                    for r, i, v in zip(self.inputs, rows, views, strict=True)
                ],
                dim=1,
            ).float()
            with autocast(device):
                logits = self.decoder(stacked(sources, rows, views))
            per_run = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(0, 2, 3))
            self.optimiser.zero_grad(set_to_none=True)
            per_run.sum().backward()
            self.optimiser.step()
            epoch_loss += per_run.detach() * len(rows[0])
        return epoch_loss / n

    def validate(self) -> torch.Tensor:
        self.decoder.eval()
        for r in self.inputs:
            r.train_source.train(False)
        with self._on_stream():
            return self.val_pass()

    def _val_losses(self) -> torch.Tensor:
        return eval_losses(
            self.decoder,
            [r.val_source for r in self.inputs],
            [r.val_masks for r in self.inputs],
            self.cfg.eval_batch_size,
            self.device,
        )

    def snapshot(self, runs: list[int]) -> list[dict]:
        # Copies on the device (no wait for the GPU); `run_epochs` moves the kept ones to the CPU at the end.
        with self._on_stream():
            state = self.decoder.state_dict()
            encoder = copy.deepcopy(self.encoder.state_dict()) if self.trains_encoder else None
            return [{"decoder": group_state(state, k, self.runs, self.device), "encoder": encoder} for k in runs]

    def state_dict(self) -> dict:
        return {
            "decoder": self.decoder.state_dict(),
            "encoder": self.encoder.state_dict() if self.trains_encoder else None,
            "optimiser": self.optimiser.state_dict(),
            "generators": [g.get_state() for g in self.generators],
        }

    def load_state_dict(self, state: dict) -> None:
        self.decoder.load_state_dict(state["decoder"])
        if self.trains_encoder:
            self.encoder.load_state_dict(state["encoder"])
        self.optimiser.load_state_dict(state["optimiser"])
        for generator, saved in zip(self.generators, state["generators"], strict=True):
            generator.set_state(saved)

    def divergence(self, epoch: int, runs: list[int]) -> FeatcacheError:
        if self.grid:
            which = "; ".join(
                f"seed {self.inputs[k].seed} at lr {self.lrs[k]:g}, weight decay {self.weight_decays[k]:g}"
                for k in runs
            )
            return FeatcacheError(
                f"training diverged: the loss of {which} at size {self.plan.size} is not finite at epoch {epoch} "
                f"(stopping the {self.runs} runs trained together); drop the largest --lr "
                f"(now {max(self.lrs[k] for k in runs):g}); runs already finished are kept"
            )
        seeds = [self.inputs[k].seed for k in runs]
        which = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
        stopped = ""
        if self.runs > 1:
            stopped = f" (stopping seeds {', '.join(str(r.seed) for r in self.inputs)}, trained together)"
        return FeatcacheError(
            f"training diverged: the loss of {which} at size {self.plan.size} is not finite at epoch {epoch}{stopped}; "
            f"lower --lr (now {self.lrs[0]:g}); runs already finished are kept"
        )


def fit_group(
    decoder: nn.Module,
    runs: list[RunInputs],
    plan: Plan,
    cfg: TrainConfig,
    device: torch.device,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    graphs: bool | None = None,
) -> list[FitResult]:
    """Train K decoders at once (``decoder`` has ``groups=K``, one run each) with SGD and BCE, keeping each run's
    epoch of lowest validation loss. ``cfg`` gives what the runs share (momentum, augmentation, evaluation
    batch) and the learning rate and weight decay of runs that name none; ``plan`` the epochs and batch size.
    ``graphs``: each epoch and validation pass as a CUDA graph after the first (`EpochGraph`); None: on CUDA.
    The timings are of the whole group."""
    task = _DecoderTask(decoder, runs, plan, cfg, device, graphs)
    try:
        result = run_epochs(task, plan.epochs, device, checkpointer, progress)
        replayed = task.train_pass.graph is not None
    finally:
        task.close()  # here, not whenever the garbage collector finds the task: maybe during another capture
    return [
        FitResult(best, history, result.train_seconds, result.total_seconds, result.epoch_train_seconds, replayed)
        for best, history in zip(result.bests, result.histories, strict=True)
    ]


def fit(
    decoder: nn.Module,
    run: RunInputs,
    plan: Plan,
    cfg: TrainConfig,
    device: torch.device,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    graphs: bool | None = None,
) -> FitResult:
    """`fit_group` for one run."""
    return fit_group(decoder, [run], plan, cfg, device, progress, checkpointer, graphs)[0]
