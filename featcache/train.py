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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol as TypingProtocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featcache.data import SplitConfig, find_samples, load_mask_full
from featcache.errors import FeatcacheError
from featcache.metrics import METRICS, confusion, mean_scores, scores
from featcache.models import Encoder, build_decoder
from featcache.protocol import protocol_for, subset
from featcache.resume import Checkpointer
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

    def resolved(self) -> tuple[int, int, int]:
        """(epochs, batch size, validation size) after applying the protocol's defaults."""
        proto = protocol_for(self.size)
        epochs = self.epochs if self.epochs is not None else proto.epochs
        batch = self.batch_size if self.batch_size is not None else proto.batch_size
        val = self.val_size if self.val_size is not None else proto.val_size
        for option, value in (("--epochs", epochs), ("--batch-size", batch), ("--val-size", val)):
            if value < 1:
                raise FeatcacheError(f"{option} {value} must be at least 1")
        if self.augment not in AUGMENTS:
            raise FeatcacheError(f"--augment {self.augment} is not one of {', '.join(AUGMENTS)}")
        if self.eval_size not in EVAL_SIZES:
            raise FeatcacheError(f"--eval-size {self.eval_size} is not one of {', '.join(EVAL_SIZES)}")
        if self.lr <= 0:
            raise FeatcacheError(f"--lr {self.lr} must be positive")
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
    """C mode: features ``[n, V, C, h, w]`` read from the store; no encoder runs."""

    def __init__(self, features: torch.Tensor, augment: str) -> None:
        self.features = features
        self.augment = augment

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        if views is None:
            return self.features[rows, 0].float()
        if self.augment == "exact":
            return self.features[rows, views].float()
        return flip_per_sample(self.features[rows, 0], views).float()

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self.features[rows, 0].float()

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _nhwc(features: torch.Tensor) -> torch.Tensor:
    """Decoder input in channels_last: its convolutions run about twice as fast, on the CPU too
    (measured), and every mode gets the same layout, so the comparison stays fair."""
    return features.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _eval_loss(decoder: nn.Module, source: FeatureSource, masks: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Mean per-pixel BCE over a whole split, decoder and encoder in eval mode (a device scalar)."""
    total = torch.zeros((), device=device)
    for start in range(0, len(masks), batch):
        rows = torch.arange(start, min(start + batch, len(masks)), device=device)
        with _autocast(device):
            logits = decoder(_nhwc(source.eval_features(rows)))
        total += F.binary_cross_entropy_with_logits(logits.float().squeeze(1), masks[rows].float(), reduction="sum")
    return total / masks.numel()


def fit(decoder: nn.Module, train_source: FeatureSource, train_masks: torch.Tensor, val_source: FeatureSource,
        val_masks: torch.Tensor, cfg: TrainConfig, device: torch.device, progress=None,
        checkpointer: Checkpointer | None = None) -> FitResult:
    """Train with SGD and BCE, validate every epoch, keep the epoch with the lowest validation loss.

    ``train_masks`` ``[n, S, S]`` and ``val_masks`` ``[m, S, S]`` uint8 on ``device``. Timing is
    synchronised: ``train_seconds`` covers the training steps only, ``total_seconds`` adds
    validation; the resume state (``checkpointer``) is written outside both.
    """
    epochs, batch, _ = cfg.resolved()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    decoder.to(memory_format=torch.channels_last)
    params = list(decoder.parameters()) + train_source.parameters()
    optimiser = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    # Batch order and views are drawn on the training device: no host round trip per step.
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    n = len(train_masks)
    history: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    best = (float("inf"), 0, None, None)
    train_seconds = total_seconds = 0.0
    encoder = getattr(train_source, "encoder", None)
    trains_encoder = encoder is not None and bool(train_source.parameters())
    first = 1
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        decoder.load_state_dict(saved["decoder"])
        if trains_encoder:
            encoder.load_state_dict(saved["encoder"])
        optimiser.load_state_dict(saved["optimiser"])
        gen.set_state(saved["generator"])
        history, best = saved["history"], tuple(saved["best"])
        train_seconds, total_seconds, first = saved["train_seconds"], saved["total_seconds"], saved["epoch"] + 1
    for epoch in range(first, epochs + 1):
        _sync(device)
        started = time.perf_counter()
        decoder.train()
        train_source.train(True)
        order = torch.randperm(n, generator=gen, device=device)
        views_all = torch.randint(0, 4, (n,), generator=gen, device=device) if cfg.augment != "none" else None
        epoch_loss = torch.zeros((), device=device)
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            views = views_all[start:start + batch] if views_all is not None else None
            target = train_masks[rows]
            if views is not None:
                target = flip_per_sample(target, views)
            with _autocast(device):
                logits = decoder(_nhwc(train_source.train_features(rows, views)))
            loss = F.binary_cross_entropy_with_logits(logits.float().squeeze(1), target.float())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            epoch_loss += loss.detach() * len(rows)
        _sync(device)
        trained = time.perf_counter()
        decoder.eval()
        train_source.train(False)
        val_loss = _eval_loss(decoder, val_source, val_masks, cfg.eval_batch_size, device)
        losses = torch.stack([epoch_loss / n, val_loss]).tolist()  # the one sync per epoch
        total_seconds += time.perf_counter() - started
        train_seconds += trained - started
        history["train_loss"].append(losses[0])
        history["val_loss"].append(losses[1])
        if losses[1] < best[0]:
            best = (
                losses[1],
                epoch,
                copy.deepcopy(decoder.state_dict()),
                copy.deepcopy(encoder.state_dict()) if trains_encoder else None,
            )
        if checkpointer is not None and checkpointer.due(epoch, epochs):
            checkpointer.save({
                "epoch": epoch, "decoder": decoder.state_dict(), "encoder": encoder.state_dict() if trains_encoder else None,
                "optimiser": optimiser.state_dict(), "generator": gen.get_state(), "history": history, "best": list(best),
                "train_seconds": train_seconds, "total_seconds": total_seconds,
            })
        if progress is not None:
            progress(epoch, epochs, losses[0], losses[1])
    return FitResult(best[1], best[0], best[2], best[3], history, train_seconds, total_seconds)


@torch.no_grad()
def predict_logits(decoder: nn.Module, source: FeatureSource, n: int, batch: int, device: torch.device) -> torch.Tensor:
    """Logits ``[n, 1, S, S]`` float32 on the CPU, in eval mode."""
    decoder.eval()
    source.train(False)
    out = []
    for start in range(0, n, batch):
        rows = torch.arange(start, min(start + batch, n), device=device)
        with _autocast(device):
            out.append(decoder(_nhwc(source.eval_features(rows))).float().cpu())
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
    epochs, batch, val_size = cfg.resolved()
    if cfg.augment == "exact" and not store.has_flip_views:
        raise FeatcacheError(
            f"{store.path} has no flip views, which --augment exact needs; extract it with --views flips "
            "(or train with --augment feature-flip or none)"
        )
    rows = select_rows(store, cfg.size, val_size, cfg.seed)
    views = slice(None) if cfg.augment == "exact" else slice(0, 1)
    train_feats = store.features(rows.train_rows)[:, views]
    target = placement(device, 2 * train_feats.nbytes)
    train_source = StoreFeatures(train_feats.to(target), cfg.augment)
    val_source = StoreFeatures(store.features(rows.val_rows)[:, :1].to(target), "none")
    test_source = StoreFeatures(store.features(rows.test_rows)[:, :1].to(target), "none")
    if target != device:
        raise FeatcacheError(f"the features of this run do not fit on {device}; use --device cpu")
    decoder = seeded_decoder(cfg, store.meta["width"]).to(device)
    result = fit(decoder, train_source, store.masks(rows.train_rows, device), val_source,
                 store.masks(rows.val_rows, device), cfg, device, progress, checkpointer)
    decoder.load_state_dict(result.best_decoder)
    test, logits = evaluate_test(store, decoder, test_source, rows, cfg, device)
    results = results_dict("C", cfg, rows, result, test, device, epochs, batch, val_size)
    return RunOutput(results, decoder_checkpoint(store, cfg, result, results), logits)


def seeded_decoder(cfg: TrainConfig, width: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_decoder(cfg.decoder, width)


def evaluate_test(store: FeatureStore, decoder: nn.Module, source: FeatureSource, rows: RunData,
                  cfg: TrainConfig, device: torch.device) -> tuple[dict[str, float], torch.Tensor]:
    """Mean test metrics over the whole test split (at S or at each image's original size), and the logits."""
    logits = predict_logits(decoder, source, len(rows.test_rows), cfg.eval_batch_size, device)
    if cfg.eval_size == "original":
        masks = original_masks(store, [store.ids[i] for i in rows.test_rows])
    else:
        masks = store.masks(rows.test_rows)
    return mean_scores(score_logits(logits, masks, cfg.eval_size == "original")), logits


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
        "in_channels": int(meta["width"]),
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
