"""One training loop for every mode; a mode only decides where a batch's features come from.

C mode reads features from the store (no encoder runs); the end-to-end and frozen modes of
`featcache.experiment` run an encoder on the store's images. Augmentation draws one view per
sample (identity, h, v, hv — independent horizontal and vertical flips with probability 1/2, as
the study's RandomHorizontalFlip + RandomVerticalFlip) from the run's seeded generator, so every
mode consumes the same random numbers: ``exact`` picks the stored features of that flipped image,
``feature-flip`` flips the identity features instead (an approximation for ViTs), encoder modes
flip the image; the mask is flipped to match in every case.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featcache.data import SplitConfig, find_samples, load_mask_full
from featcache.errors import FeatcacheError, OptionError
from featcache.metrics import METRICS, confusion, mean_scores, scores
from featcache.models import DECODERS, Encoder, build_decoder, group_state, stack_states
from featcache.protocol import protocol_for, subset
from featcache.resume import Checkpointer
from featcache.runtime import autocast, err_console, synchronize
from featcache.store import VIEW_FLIPS, VIEWS, FeatureStore, placement

AUGMENTS = ("exact", "feature-flip", "none")
EVAL_SIZES = ("224", "original")
DECODER_CHECKPOINT_FORMAT = "featcache-decoder/1"
_FLIPS = [VIEW_FLIPS[name] for name in VIEWS["flips"]]


@dataclass
class TrainConfig:
    """One decoder training run. None means: the study's protocol for ``size`` (`protocol_for`)."""

    size: int
    seed: int = 0
    augment: str = "exact"
    decoder: str = "sd"
    epochs: int | None = None
    batch_size: int | None = None
    val_size: int | None = None
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eval_size: str = "224"
    eval_batch_size: int = 64
    layers: tuple[int, ...] | None = None  # the stored blocks read (FeatureStore.layer_positions); None: all

    def resolved(self) -> tuple[int, int, int]:
        """(epochs, batch size, validation size) after applying the protocol's defaults."""
        proto = protocol_for(self.size)
        epochs = self.epochs if self.epochs is not None else proto.epochs
        batch = self.batch_size if self.batch_size is not None else proto.batch_size
        val = self.val_size if self.val_size is not None else proto.val_size
        for option, value in (("--epochs", epochs), ("--batch-size", batch), ("--val-size", val)):
            if value < 1:
                raise OptionError(f"{option} {value} must be at least 1")
        if self.augment not in AUGMENTS:
            raise OptionError(f"--augment {self.augment} is not one of {', '.join(AUGMENTS)}")
        if self.decoder not in DECODERS:
            raise OptionError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.eval_size not in EVAL_SIZES:
            raise OptionError(f"--eval-size {self.eval_size} is not one of {', '.join(EVAL_SIZES)}")
        if self.lr <= 0:
            raise OptionError(f"--lr {self.lr} must be positive")
        return epochs, batch, val


def flip_per_sample(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Flip each sample of ``x`` ``[B, ..., H, W]`` as its view says (0 identity, 1 h, 2 v, 3 hv).

    Branch-free (bit 0 of the view: horizontal, bit 1: vertical), so it never waits on the GPU.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    h = (views & 1).bool().view(shape)
    v = (views & 2).bool().view(shape)
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)


class FeatureSource(TypingProtocol):
    """Where a mode's features come from. Rows index the tensors the source was built with."""

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor: ...

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> list[nn.Parameter]: ...

    def train(self, on: bool) -> None: ...


class StoreFeatures:
    """C mode: features ``[n, V, C, h, w]`` read from the store; no encoder runs.

    ``positions`` ``[m]`` (optional) maps this run's rows to rows of ``features``, so the runs of a
    group share one copy of the features they have in common.
    """

    def __init__(self, features: torch.Tensor, augment: str, positions: torch.Tensor | None = None) -> None:
        self.features = features
        self.augment = augment
        self.positions = positions

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.positions is None else self.positions[rows]

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        rows = self._rows(rows)
        if views is None:
            return self.features[rows, 0].float()
        if self.augment == "exact":
            return self.features[rows, views].float()
        return flip_per_sample(self.features[rows, 0], views).float()

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self.features[self._rows(rows), 0].float()

    def parameters(self) -> list[nn.Parameter]:
        return []

    def train(self, on: bool) -> None:
        pass


class EncoderFeatures:
    """Encoder modes: the encoder runs on the (flipped) uint8 images ``[n, 3, S, S]`` every step."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, trainable: bool) -> None:
        self.encoder = encoder
        self.images = images
        self.trainable = trainable

    def _encode(self, images: torch.Tensor, grad: bool) -> torch.Tensor:
        x = images.float().div_(255)
        if x.is_cuda:  # as extraction feeds the encoder, so F and C start from the same computation
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(grad):
            return self.encoder(x)

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        images = self.images[rows]
        if views is not None:
            images = flip_per_sample(images, views)
        return self._encode(images, self.trainable)

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self._encode(self.images[rows], False)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters()) if self.trainable else []

    def train(self, on: bool) -> None:
        self.encoder.train(on and self.trainable)


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    best_decoder: dict
    best_encoder: dict | None
    history: dict[str, list[float]]
    train_seconds: float
    total_seconds: float


def _nhwc(features: torch.Tensor) -> torch.Tensor:
    """Decoder input in channels_last: its convolutions run about twice as fast, on the CPU too
    (measured), and every mode gets the same layout, so the comparison stays fair."""
    return features.contiguous(memory_format=torch.channels_last)


def _stacked(sources: list[FeatureSource], rows: list[torch.Tensor], views: list[torch.Tensor | None] | None) -> torch.Tensor:
    """Group k's features side by side on the channel axis: ``[B, K*C, h, w]``, channels_last."""
    if views is None:
        feats = [src.eval_features(r) for src, r in zip(sources, rows)]
    else:
        feats = [src.train_features(r, v) for src, r, v in zip(sources, rows, views)]
    return _nhwc(feats[0] if len(feats) == 1 else torch.cat(feats, dim=1))


@torch.no_grad()
def _eval_losses(decoder: nn.Module, sources: list[FeatureSource], masks: list[torch.Tensor], batch: int,
                 device: torch.device) -> torch.Tensor:
    """Mean per-pixel BCE of each group over its whole split, in eval mode: a device tensor ``[K]``."""
    m = len(masks[0])
    total = torch.zeros(len(sources), device=device)
    for start in range(0, m, batch):
        rows = torch.arange(start, min(start + batch, m), device=device)
        with autocast(device):
            logits = decoder(_stacked(sources, [rows] * len(sources), None))
        target = torch.stack([mk[rows] for mk in masks], dim=1).float()
        total += F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").sum(dim=(0, 2, 3))
    return total / masks[0].numel()


def fit(decoder: nn.Module, train_source: FeatureSource, train_masks: torch.Tensor, val_source: FeatureSource,
        val_masks: torch.Tensor, cfg: TrainConfig, device: torch.device, progress=None,
        checkpointer: Checkpointer | None = None) -> FitResult:
    """Train one decoder with SGD and BCE, validate every epoch, keep the epoch with the lowest validation loss.

    ``train_masks`` ``[n, S, S]`` and ``val_masks`` ``[m, S, S]`` uint8 on ``device``. Timing is
    synchronised: ``train_seconds`` covers the training steps only, ``total_seconds`` adds
    validation; the resume state (``checkpointer``) is written outside both.
    """
    return fit_group(decoder, [train_source], [train_masks], [val_source], [val_masks], [cfg], device, progress,
                     checkpointer)[0]


def fit_group(decoder: nn.Module, train_sources: list[FeatureSource], train_masks: list[torch.Tensor],
              val_sources: list[FeatureSource], val_masks: list[torch.Tensor], cfgs: list[TrainConfig],
              device: torch.device, progress=None, checkpointer: Checkpointer | None = None) -> list[FitResult]:
    """`fit` for K runs at once (K seeds of one size): ``decoder`` has ``groups=K``.

    Each run keeps its own subset, random stream (batch order, views), batch statistics (its own
    BatchNorm channels), optimiser state (SGD is elementwise, and the summed loss gives each group
    exactly its own gradient) and model selection, so the K results equal K separate `fit` runs
    up to floating-point order. The timings are of the whole group.
    """
    k_runs = len(cfgs)
    epochs, batch, _ = cfgs[0].resolved()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    decoder.to(memory_format=torch.channels_last)
    encoder = getattr(train_sources[0], "encoder", None)
    trains_encoder = encoder is not None and bool(train_sources[0].parameters())
    if trains_encoder and k_runs > 1:
        raise ValueError("runs that train the encoder cannot be grouped")
    params = list(decoder.parameters()) + train_sources[0].parameters()
    cfg = cfgs[0]
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Batch order and views are drawn on the training device: no host round trip per step.
    gens = [torch.Generator(device=device).manual_seed(c.seed) for c in cfgs]
    n = len(train_masks[0])
    histories: list[dict[str, list[float]]] = [{"train_loss": [], "val_loss": []} for _ in cfgs]
    bests: list[tuple] = [(float("inf"), 0, None, None) for _ in cfgs]
    train_seconds = total_seconds = 0.0
    first = 1
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        decoder.load_state_dict(saved["decoder"])
        if trains_encoder:
            encoder.load_state_dict(saved["encoder"])
        optimiser.load_state_dict(saved["optimiser"])
        for gen, state in zip(gens, saved["generators"]):
            gen.set_state(state)
        histories, bests = saved["histories"], [tuple(b) for b in saved["bests"]]
        train_seconds, total_seconds, first = saved["train_seconds"], saved["total_seconds"], saved["epoch"] + 1
    for epoch in range(first, epochs + 1):
        synchronize(device)
        started = time.perf_counter()
        decoder.train()
        for src in train_sources:
            src.train(True)
        orders = [torch.randperm(n, generator=g, device=device) for g in gens]
        views_all = [torch.randint(0, 4, (n,), generator=g, device=device) if cfg.augment != "none" else None for g in gens]
        epoch_loss = torch.zeros(k_runs, device=device)
        for start in range(0, n, batch):
            rows = [order[start:start + batch] for order in orders]
            views = [v[start:start + batch] if v is not None else None for v in views_all]
            target = torch.stack([
                flip_per_sample(mk[r], v) if v is not None else mk[r] for mk, r, v in zip(train_masks, rows, views)
            ], dim=1).float()
            with autocast(device):
                logits = decoder(_stacked(train_sources, rows, views))
            per_run = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(0, 2, 3))
            optimiser.zero_grad(set_to_none=True)
            per_run.sum().backward()
            optimiser.step()
            epoch_loss += per_run.detach() * len(rows[0])
        synchronize(device)
        trained = time.perf_counter()
        decoder.eval()
        for src in train_sources:
            src.train(False)
        val_loss = _eval_losses(decoder, val_sources, val_masks, cfg.eval_batch_size, device)
        losses = torch.stack([epoch_loss / n, val_loss]).tolist()  # the one sync per epoch
        _refuse_divergence(losses, epoch, cfgs, checkpointer)
        total_seconds += time.perf_counter() - started
        train_seconds += trained - started
        state = None
        for k in range(k_runs):
            histories[k]["train_loss"].append(losses[0][k])
            histories[k]["val_loss"].append(losses[1][k])
            if losses[1][k] < bests[k][0]:
                state = decoder.state_dict() if state is None else state
                bests[k] = (
                    losses[1][k],
                    epoch,
                    group_state(state, k, k_runs),
                    copy.deepcopy(encoder.state_dict()) if trains_encoder else None,
                )
        if checkpointer is not None and checkpointer.due(epoch, epochs):
            checkpointer.save({
                "epoch": epoch, "decoder": decoder.state_dict(), "encoder": encoder.state_dict() if trains_encoder else None,
                "optimiser": optimiser.state_dict(), "generators": [g.get_state() for g in gens], "histories": histories,
                "bests": [list(b) for b in bests], "train_seconds": train_seconds, "total_seconds": total_seconds,
            })
        if progress is not None:
            progress(epoch, epochs, sum(losses[0]) / k_runs, sum(losses[1]) / k_runs)
    return [FitResult(b[1], b[0], b[2], b[3], h, train_seconds, total_seconds) for b, h in zip(bests, histories)]


def _refuse_divergence(losses: list[list[float]], epoch: int, cfgs: list[TrainConfig],
                       checkpointer: Checkpointer | None) -> None:
    """Stop the group when a run's epoch loss (``losses`` = [train per run, validation per run]) is not finite.

    Every later epoch would be NaN too and no epoch could be selected. The whole group stops, since its
    runs share one optimiser step; its resume state goes too: resumed, it would diverge again.
    """
    bad = [c.seed for k, c in enumerate(cfgs) if not (math.isfinite(losses[0][k]) and math.isfinite(losses[1][k]))]
    if not bad:
        return
    if checkpointer is not None:
        checkpointer.done()
    runs = f"seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}"
    stopped = f" (stopping seeds {', '.join(str(c.seed) for c in cfgs)}, trained together)" if len(cfgs) > 1 else ""
    raise FeatcacheError(
        f"training diverged: the loss of {runs} at size {cfgs[0].size} is not finite at epoch {epoch}{stopped}; "
        f"lower --lr (now {cfgs[0].lr:g}); runs already finished are kept"
    )


@torch.no_grad()
def predict_logits(decoder: nn.Module, sources: list[FeatureSource], n: int, batch: int, device: torch.device) -> torch.Tensor:
    """Logits ``[n, K, S, S]`` float32 on the CPU, in eval mode (K = len(sources) = the decoder's groups)."""
    decoder.eval()
    for src in sources:
        src.train(False)
    out = []
    for start in range(0, n, batch):
        rows = torch.arange(start, min(start + batch, n), device=device)
        with autocast(device):
            out.append(decoder(_stacked(sources, [rows] * len(sources), None)).float().cpu())
    return torch.cat(out)


def original_masks(store: FeatureStore, ids: list[str]) -> list[np.ndarray]:
    """The truth masks of ``ids`` at their original resolution, from the dataset the store was made of."""
    dataset = store.meta["dataset"]
    root = Path(store.meta.get("dataset_root", ""))
    if not root.is_dir():
        raise FeatcacheError(f"--eval-size original reads the masks from {root}, which is not there; use --eval-size 224")
    split_cfg = dataset.get("split_config")
    index = find_samples(root, SplitConfig(**split_cfg) if split_cfg else None)
    if index.fingerprint() != dataset["fingerprint"]:
        raise FeatcacheError(f"the dataset at {root} changed since {store.path} was extracted; re-extract it or use --eval-size 224")
    by_id = {s.id: s for s in index.samples}
    return [load_mask_full(by_id[i].mask) for i in ids]


def score_logits(logits: torch.Tensor, masks: torch.Tensor | list[np.ndarray], orig: bool) -> dict[str, torch.Tensor]:
    """Per-image scores (study convention) of logits ``[n, 1, S, S]`` against masks at S or at original size."""
    if not orig:
        counts = confusion(torch.sigmoid(logits[:, 0]), masks.cpu())
    else:
        rows = []
        for logit, mask in zip(logits, masks):
            up = F.interpolate(logit[None], size=mask.shape, mode="bilinear", align_corners=False)
            rows.append(confusion(torch.sigmoid(up[:, 0]), torch.from_numpy(mask)[None]))
        counts = torch.cat(rows)
    return scores(counts, "study")


@dataclass
class RunData:
    """The rows of one (size, seed) run: positions into the store and the masks at S."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    train_ids: list[str] = field(default_factory=list)


def resolved_for(store: FeatureStore, cfg: TrainConfig) -> tuple[int, int, int]:
    """`TrainConfig.resolved` with the protocol's validation size capped (with a note) at the store's validation split.

    An explicit ``val_size`` is never capped: `select_rows` refuses one larger than the split.
    """
    epochs, batch, val_size = cfg.resolved()
    n_val = len(store.indices("val"))
    if cfg.val_size is None and val_size > n_val:
        err_console.print(f"validation size {val_size} of the protocol capped at the {n_val} images of the validation split")
        val_size = n_val
    return epochs, batch, val_size


def check_runnable(store: FeatureStore, cfg: TrainConfig) -> tuple[int, int, int]:
    """Refuse, before any work starts, a C run the store cannot give; (epochs, batch size, validation size)."""
    epochs, batch, val_size = resolved_for(store, cfg)
    if cfg.augment == "exact" and not store.has_flip_views:
        raise FeatcacheError(
            f"{store.path} has no flip views, which --augment exact needs; extract it with --views flips "
            "(or train with --augment feature-flip or none)"
        )
    select_rows(store, cfg.size, val_size, cfg.seed)
    if cfg.layers is not None:
        store.layer_positions(cfg.layers)
    return epochs, batch, val_size


def refuse_empty_masks(store: FeatureStore, masks: torch.Tensor, cfg: TrainConfig) -> None:
    """Refuse a training subset whose masks ``[n, S, S]`` (on the CPU: no device sync) hold no lesion pixel.

    The decoder would learn to answer "background" and score IoU 0, which says nothing about why.
    """
    if not bool(masks.any()):
        raise FeatcacheError(
            f"every mask of the training subset of {store.path} (size {cfg.size}, seed {cfg.seed}) is empty: "
            "nothing to learn; check that the dataset's masks mark the lesion as 255 (or 1) on 0, and re-extract "
            "the store"
        )


def shared_rows(row_sets: list[np.ndarray]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The sorted union of several runs' store rows, and each run's positions ``[m_k]`` into it."""
    union = np.unique(np.concatenate(row_sets))
    return union, [torch.from_numpy(np.searchsorted(union, r)) for r in row_sets]


def select_rows(store: FeatureStore, size: int, val_size: int, seed: int) -> RunData:
    """Seeded, nested training subset and seeded validation subset; the whole test split."""
    train, val = store.indices("train"), store.indices("val")
    if size > len(train):
        raise FeatcacheError(f"--size {size} is larger than the training split of {store.path} ({len(train)} images)")
    if val_size > len(val):
        raise FeatcacheError(f"--val-size {val_size} is larger than the validation split of {store.path} ({len(val)} images)")
    train_rows = train[subset(len(train), size, seed, salt=0)]
    val_rows = val[subset(len(val), val_size, seed, salt=1)]
    return RunData(train_rows, val_rows, store.indices("test"), [store.ids[i] for i in train_rows])


@dataclass
class RunOutput:
    """One run: its ``results.json`` dict, its checkpoint dict and the test logits ``[n_test, 1, S, S]``."""

    results: dict
    checkpoint: dict
    test_logits: torch.Tensor


def train_from_store(store: FeatureStore, cfg: TrainConfig, device: torch.device, progress=None,
                     checkpointer: Checkpointer | None = None) -> RunOutput:
    """C mode, one (size, seed), decoder trained from the store's features."""
    return train_group_from_store(store, [cfg], device, progress, checkpointer)[0]


def train_group_from_store(store: FeatureStore, cfgs: list[TrainConfig], device: torch.device, progress=None,
                           checkpointer: Checkpointer | None = None) -> list[RunOutput]:
    """C mode, one size and several seeds trained together as one grouped decoder (`fit_group`).

    Each run's ``results.json`` reports its share of the group's time (``train_seconds`` divided
    by the number of runs) and the group's own under ``group``.
    """
    cfg = cfgs[0]
    epochs, batch, val_size = check_runnable(store, cfg)
    rows = [select_rows(store, c.size, val_size, c.seed) for c in cfgs]
    # The seeds' subsets overlap (at the largest size they are all the whole split): each row is read once.
    train_union, train_pos = shared_rows([r.train_rows for r in rows])
    val_union, val_pos = shared_rows([r.val_rows for r in rows])
    train_masks = store.masks(train_union)
    for c, p in zip(cfgs, train_pos):
        refuse_empty_masks(store, train_masks[p], c)
    train_feats = store.features(train_union, identity_only=cfg.augment != "exact", layers=cfg.layers)
    val_feats = store.features(val_union, identity_only=True, layers=cfg.layers)
    test_feats = store.features(rows[0].test_rows, identity_only=True, layers=cfg.layers)
    if placement(device, 2 * (train_feats.nbytes + val_feats.nbytes + test_feats.nbytes)) != device:
        raise FeatcacheError(f"the features of this run do not fit on {device}; use --device cpu or fewer --seeds")
    train_feats, val_feats = train_feats.to(device), val_feats.to(device)
    train_masks, val_masks = train_masks.to(device), store.masks(val_union, device)
    train_pos, val_pos = [p.to(device) for p in train_pos], [p.to(device) for p in val_pos]
    train_sources = [StoreFeatures(train_feats, cfg.augment, p) for p in train_pos]
    val_sources = [StoreFeatures(val_feats, "none", p) for p in val_pos]
    test_source = StoreFeatures(test_feats.to(device), "none")
    width, k_runs = store.feature_width(cfg.layers), len(cfgs)
    decoder = build_decoder(cfg.decoder, width, k_runs, store.patch_size)
    decoder.load_state_dict(stack_states([seeded_decoder(c, width, store.patch_size).state_dict() for c in cfgs]))
    decoder.to(device)
    fits = fit_group(decoder, train_sources, [train_masks[p] for p in train_pos], val_sources,
                     [val_masks[p] for p in val_pos], cfgs, device, progress, checkpointer)
    decoder.load_state_dict(stack_states([f.best_decoder for f in fits]))
    logits = predict_logits(decoder, [test_source] * k_runs, len(rows[0].test_rows), cfg.eval_batch_size, device)
    outputs = []
    for k, (c, r, fitted) in enumerate(zip(cfgs, rows, fits)):
        test = score_test(store, logits[:, k:k + 1], r, c)
        results = results_dict("C", c, r, fitted, test, device, epochs, batch, val_size)
        if k_runs > 1:
            results["group"] = {"runs": k_runs, "seeds": [x.seed for x in cfgs], "train_seconds": round(fitted.train_seconds, 4),
                                "total_seconds": round(fitted.total_seconds, 4)}
            results["train_seconds"] = round(fitted.train_seconds / k_runs, 4)
            results["total_seconds"] = round(fitted.total_seconds / k_runs, 4)
        outputs.append(RunOutput(results, decoder_checkpoint(store, c, fitted, results), logits[:, k:k + 1]))
    return outputs


def seeded_decoder(cfg: TrainConfig, width: int, patch_size: int = 16) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_decoder(cfg.decoder, width, patch_size=patch_size)


def evaluate_test(store: FeatureStore, decoder: nn.Module, source: FeatureSource, rows: RunData,
                  cfg: TrainConfig, device: torch.device) -> tuple[dict[str, float], torch.Tensor]:
    """Mean test metrics over the whole test split (at S or at each image's original size), and the logits."""
    logits = predict_logits(decoder, [source], len(rows.test_rows), cfg.eval_batch_size, device)
    return score_test(store, logits, rows, cfg), logits


def score_test(store: FeatureStore, logits: torch.Tensor, rows: RunData, cfg: TrainConfig) -> dict[str, float]:
    """Mean test metrics of logits ``[n_test, 1, S, S]``, at S or at each image's original size."""
    if cfg.eval_size == "original":
        masks = original_masks(store, [store.ids[i] for i in rows.test_rows])
    else:
        masks = store.masks(rows.test_rows)
    return mean_scores(score_logits(logits, masks, cfg.eval_size == "original"))


def results_dict(mode: str, cfg: TrainConfig, rows: RunData, fit_result: FitResult, test: dict[str, float],
                 device: torch.device, epochs: int, batch: int, val_size: int) -> dict:
    """The ``results.json`` schema of DESIGN.md, plus what makes a run reproducible."""
    return {
        "mode": mode,
        "size": cfg.size,
        "seed": cfg.seed,
        "val_size": val_size,
        "epochs": epochs,
        "batch_size": batch,
        "best_epoch": fit_result.best_epoch,
        "best_val_loss": fit_result.best_val_loss,
        "train_seconds": round(fit_result.train_seconds, 4),
        "total_seconds": round(fit_result.total_seconds, 4),
        "augment": cfg.augment,
        "device": str(device),
        "decoder": cfg.decoder,
        "eval_size": cfg.eval_size,
        "optimiser": {"name": "SGD", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        "test": {k: test[k] for k in METRICS},
        "test_images": len(rows.test_rows),
        "config": asdict(cfg),
        "train_ids": rows.train_ids,
        "history": fit_result.history,
    }


def decoder_checkpoint(store: FeatureStore, cfg: TrainConfig, fit_result: FitResult, results: dict) -> dict:
    """Best decoder weights with the store's provenance, so `predict` can rebuild the encoder."""
    meta = store.meta
    return {
        "format": DECODER_CHECKPOINT_FORMAT,
        "decoder": cfg.decoder,
        "in_channels": store.feature_width(cfg.layers),
        "layers": [store.layers[p] for p in store.layer_positions(cfg.layers)],
        "patch_size": store.patch_size,
        "state_dict": fit_result.best_decoder,
        "encoder_state_dict": fit_result.best_encoder,
        "store": {
            "path": str(store.path),
            "encoder": meta["encoder"],
            "preprocessing": meta["preprocessing"],
            "dataset": meta["dataset"],
            "dataset_root": meta.get("dataset_root"),
        },
        "config": asdict(cfg),
        "results": {k: v for k, v in results.items() if k not in ("history", "train_ids")},
    }
