"""The decoder fit: K decoders trained at once as one grouped network (`fit_group`), each run on its own inputs,
with SGD and BCE, CUDA graphs after the first epoch on CUDA; evaluation losses and test logits.

On CUDA a task's training epoch and validation pass each run as one CUDA graph
(`featcache.train.graphs.EpochGraph`), captured after a first eager epoch: one launch per epoch instead of
thousands of small kernels, which is what bounds the small sizes of the protocol. The CPU path is
the eager one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from featcache.core.context import Context
from featcache.core.errors import FeatcacheError
from featcache.core.progress import EpochCallback
from featcache.core.runtime import autocast
from featcache.models.decoders import group_state
from featcache.train.config import TrainConfig
from featcache.train.graphs import EpochGraph
from featcache.train.loop import BestEpoch, run_epochs
from featcache.train.optim import GroupedSGD
from featcache.train.protocol import Plan
from featcache.train.resume import Checkpointer
from featcache.train.sources import FeatureSource, flip_per_sample, stacked


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
    decoder: nn.Module, sources: list[FeatureSource], masks: list[torch.Tensor], *, batch: int, device: torch.device
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
    decoder: nn.Module, sources: list[FeatureSource], *, n: int, batch: int, device: torch.device
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
        *,
        plan: Plan,
        cfg: TrainConfig,
        device: torch.device,
        graphs: bool,
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
            self.optimiser = GroupedSGD(params, self.lrs, self.weight_decays, momentum=cfg.momentum)
        # Batch order and views are drawn on the training device: no host round trip per step.
        self.generators = [torch.Generator(device=device).manual_seed(r.seed) for r in runs]
        self.n = len(runs[0].train_masks)
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
        self.train_pass = EpochGraph(self._train_steps, f"training ({label})", self.stream, enabled=graphs)
        # Validation replays only after training, on the same stream: it can reuse the training graph's memory.
        self.val_pass = EpochGraph(
            self._val_losses, f"validation ({label})", self.stream, enabled=graphs, share_pool=self.train_pass
        )

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
            batch=self.cfg.eval_batch_size,
            device=self.device,
        )

    def snapshot(self, runs: list[int]) -> list[dict]:
        # Copies on the device (no wait for the GPU); `run_epochs` moves the kept ones to the CPU at the end.
        with self._on_stream():
            state = self.decoder.state_dict()
            encoder = copy.deepcopy(self.encoder.state_dict()) if self.trains_encoder else None
            return [{"decoder": group_state(state, k, self.runs, device=self.device), "encoder": encoder} for k in runs]

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
    *,
    plan: Plan,
    cfg: TrainConfig,
    ctx: Context,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
) -> list[FitResult]:
    """Train K decoders at once (``decoder`` has ``groups=K``, one run each) with SGD and BCE, keeping each run's
    epoch of lowest validation loss. ``cfg`` gives what the runs share (momentum, augmentation, evaluation
    batch) and the learning rate and weight decay of runs that name none; ``plan`` the epochs and batch size.
    ``ctx``: the device, and whether each epoch and validation pass runs as a CUDA graph after the first
    (`EpochGraph`). The timings are of the whole group."""
    task = _DecoderTask(decoder, runs, plan=plan, cfg=cfg, device=ctx.device, graphs=ctx.cuda_graphs)
    try:
        result = run_epochs(task, epochs=plan.epochs, device=ctx.device, checkpointer=checkpointer, progress=progress)
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
    *,
    plan: Plan,
    cfg: TrainConfig,
    ctx: Context,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
) -> FitResult:
    """`fit_group` for one run."""
    return fit_group(decoder, [run], plan=plan, cfg=cfg, ctx=ctx, progress=progress, checkpointer=checkpointer)[0]
