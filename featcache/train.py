"""A run: its plan and rows, the C-mode and encoder-mode runs, test scoring, and the schemas of
``results.json`` and of the decoder checkpoint.

C runs read the store's features (`train_group_from_store`, one seed or several as one grouped
decoder); encoder runs (`train_encoder_mode`) run an encoder on the store's images; `train_mode`
starts either, as `featcache.modes.MODES` says.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featcache.data import SplitConfig, find_samples, load_mask_full
from featcache.errors import FeatcacheError, OptionError, check_choice
from featcache.loop import FitResult, RunInputs, fit, fit_group, predict_logits
from featcache.metrics import METRICS, confusion, mean_scores, scores
from featcache.models import DECODERS, AnyEncoder, build_decoder, stack_states
from featcache.modes import MODES
from featcache.progress import EpochCallback
from featcache.protocol import Plan, plan_run, subset
from featcache.resume import Checkpointer
from featcache.runtime import GLOBAL_RNG, seeded
from featcache.sources import EncoderFeatures, StoreFeatures
from featcache.store import FeatureStore, placement

AUGMENTS = ("exact", "feature-flip", "none")
EVAL_SIZES = ("224", "original")
DECODER_CHECKPOINT_FORMAT = "featcache-decoder/1"


@dataclass
class TrainConfig:
    """One decoder training run. None means: the study's protocol for ``size`` (see `featcache.protocol`)."""

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

    def validate(self) -> None:
        """Refuse option values that can never be valid (a usage error)."""
        check_choice("--augment", self.augment, AUGMENTS)
        if self.decoder not in DECODERS:
            raise OptionError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        check_choice("--eval-size", self.eval_size, EVAL_SIZES)
        if self.lr <= 0:
            raise OptionError(f"--lr {self.lr} must be positive")
        if self.weight_decay < 0:
            raise OptionError(f"--weight-decay {self.weight_decay} must not be negative")

    def plan(self, store: FeatureStore) -> Plan:
        """The plan of this run on ``store``: options checked, protocol defaults applied, sizes checked against
        the store's splits (`plan_run`)."""
        self.validate()
        return plan_run(
            self.size,
            self.epochs,
            self.batch_size,
            self.val_size,
            len(store.indices("train")),
            len(store.indices("val")),
            str(store.path),
        )


def check_store_run(store: FeatureStore, cfg: TrainConfig) -> None:
    """Refuse, before any work, a C run the store cannot give."""
    if cfg.layers is not None:
        store.layer_positions(cfg.layers)
    if cfg.augment == "exact" and not store.has_flip_views:
        raise FeatcacheError(
            f"{store.path} has no flip views, which --augment exact needs; extract it with --views flips "
            "(or train with --augment feature-flip or none)"
        )


@dataclass
class RunData:
    """The store rows of one (size, seed) run, and the ids of its training images."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    train_ids: list[str] = field(default_factory=list)


def select_rows(store: FeatureStore, plan: Plan, seed: int) -> RunData:
    """Seeded, nested training subset and seeded validation subset; the whole test split."""
    train, val = store.indices("train"), store.indices("val")
    train_rows = train[subset(len(train), plan.size, seed, salt=0)]
    val_rows = val[subset(len(val), plan.val_size, seed, salt=1)]
    return RunData(train_rows, val_rows, store.indices("test"), [store.ids[i] for i in train_rows])


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


def seeded_decoder(cfg: TrainConfig, width: int, patch_size: int = 16) -> nn.Module:
    """The decoder of ``cfg`` for features of ``width`` channels on a grid of ``patch_size`` pixels per cell,
    initialised from its seed (the same weights whichever mode trains it)."""
    with seeded(cfg.seed):
        return build_decoder(cfg.decoder, width, patch_size=patch_size)


def grouped_decoder(cfgs: list[TrainConfig], width: int, patch_size: int = 16) -> nn.Module:
    """One grouped decoder (``groups = len(cfgs)``) whose group k has run k's seeded initial weights, on the CPU.

    Built under `GLOBAL_RNG`: the unseeded build draws from torch's global generator too, which would shift
    the seeded draws of a thread building beside it.
    """
    with GLOBAL_RNG:
        decoder = build_decoder(cfgs[0].decoder, width, len(cfgs), patch_size)
        decoder.load_state_dict(stack_states([seeded_decoder(c, width, patch_size).state_dict() for c in cfgs]))
    return decoder


@dataclass
class RunOutput:
    """One run: its ``results.json`` dict, its checkpoint dict (None for encoder modes) and the test logits
    ``[n_test, 1, S, S]``."""

    results: dict
    checkpoint: dict | None
    test_logits: torch.Tensor


def train_from_store(
    store: FeatureStore,
    cfg: TrainConfig,
    device: torch.device,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
) -> RunOutput:
    """C mode, one (size, seed), decoder trained from the store's features."""
    return train_group_from_store(store, [cfg], device, progress, checkpointer)[0]


@dataclass
class SharedSplits:
    """The store data of several runs on the training device, each split read once: the sorted union of the
    runs' training rows with their inputs and masks ``[n, S, S]`` uint8, the same for validation, and the test
    split's inputs. Inputs are features ``[n, V, C, h, w]`` for C runs (V = 1 unless ``exact`` flips are
    needed) or images ``[n, 3, S, S]`` uint8 for encoder runs.

    The seeds' subsets overlap, and those of a sweep's sizes nest (at the largest size they are all the
    whole training split), so every run indexes into one copy (`positions`).
    """

    train_rows: np.ndarray
    train_inputs: torch.Tensor
    train_masks: torch.Tensor
    val_rows: np.ndarray
    val_inputs: torch.Tensor
    val_masks: torch.Tensor
    test_rows: np.ndarray
    test_inputs: torch.Tensor

    def positions(self, split: str, rows: np.ndarray) -> torch.Tensor:
        """Where the store rows ``rows`` of ``split`` (train or val) are in this copy: ``[m]`` on its device."""
        union = self.train_rows if split == "train" else self.val_rows
        device = self.train_inputs.device
        return torch.from_numpy(np.searchsorted(union, rows)).to(device)


def load_splits(
    store: FeatureStore, runs: list[tuple[TrainConfig, RunData]], device: torch.device, images: bool = False
) -> SharedSplits:
    """Read the rows of every run in ``runs`` once, refuse a run whose training masks are all empty, and place the
    copy on ``device``: the features (for C runs, which must share augmentation and layers) or, with ``images``,
    the images (for encoder runs)."""
    cfg = runs[0][0]
    train_rows = np.unique(np.concatenate([r.train_rows for _, r in runs]))
    val_rows = np.unique(np.concatenate([r.val_rows for _, r in runs]))
    test_rows = runs[0][1].test_rows
    train_masks = store.masks(train_rows)
    for c, r in runs:
        refuse_empty_masks(store, train_masks[np.searchsorted(train_rows, r.train_rows)], c)
    if images:
        inputs = [store.images(rows) for rows in (train_rows, val_rows, test_rows)]
    else:
        inputs = [
            store.features(train_rows, identity_only=cfg.augment != "exact", layers=cfg.layers),
            store.features(val_rows, identity_only=True, layers=cfg.layers),
            store.features(test_rows, identity_only=True, layers=cfg.layers),
        ]
    if placement(device, 2 * sum(x.nbytes for x in inputs)) != device:
        raise FeatcacheError(f"the inputs of these runs do not fit on {device}; use --device cpu or fewer --seeds")
    train, val, test = (x.to(device) for x in inputs)
    return SharedSplits(
        train_rows, train, train_masks.to(device), val_rows, val, store.masks(val_rows, device), test_rows, test
    )


def train_group_from_store(
    store: FeatureStore,
    cfgs: list[TrainConfig],
    device: torch.device,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    plan: Plan | None = None,
    data: SharedSplits | None = None,
    graphs: bool | None = None,
) -> list[RunOutput]:
    """C mode, one size and several runs trained together as one grouped decoder (`fit_group`).

    The runs differ in seed and may differ in learning rate and weight decay (a grid, each run's
    own applied by `featcache.loop.GroupedSGD`); everything else is ``cfgs[0]``'s. ``plan``: the
    runs' plan when the caller resolved it already (else resolved here from ``cfgs[0]``). ``data``:
    the store's rows already on the device (`load_splits`, holding at least these runs' rows), else
    read here. ``graphs``: as `fit_group`'s. Each run's ``results.json`` reports its share of the
    group's time (``train_seconds`` divided by the number of runs) and the group's own under ``group``.
    """
    cfg = cfgs[0]
    plan = plan or cfg.plan(store)
    check_store_run(store, cfg)
    rows = [select_rows(store, plan, c.seed) for c in cfgs]
    if data is None:
        data = load_splits(store, list(zip(cfgs, rows, strict=True)), device)
    runs = []
    for c, r in zip(cfgs, rows, strict=True):
        tp, vp = data.positions("train", r.train_rows), data.positions("val", r.val_rows)
        runs.append(
            RunInputs(
                c.seed,
                StoreFeatures(data.train_inputs, cfg.augment, tp),
                data.train_masks[tp],
                StoreFeatures(data.val_inputs, "none", vp),
                data.val_masks[vp],
                c.lr,
                c.weight_decay,
            )
        )
    test_source = StoreFeatures(data.test_inputs, "none")
    k_runs = len(cfgs)
    decoder = grouped_decoder(cfgs, store.feature_width(cfg.layers), store.patch_size).to(device)
    fits = fit_group(decoder, runs, plan, cfg, device, progress, checkpointer, graphs)
    decoder.load_state_dict(stack_states([f.best.weights["decoder"] for f in fits]))
    logits = predict_logits(decoder, [test_source] * k_runs, len(rows[0].test_rows), cfg.eval_batch_size, device)
    outputs = []
    for k, (c, r, fitted) in enumerate(zip(cfgs, rows, fits, strict=True)):
        test = score_test(store, logits[:, k : k + 1], r, c)
        results = results_dict("C", c, r, fitted, test, device, plan)
        if k_runs > 1:
            results["group"] = {
                "runs": k_runs,
                "seeds": [x.seed for x in cfgs],
                "train_seconds": round(fitted.train_seconds, 4),
                "total_seconds": round(fitted.total_seconds, 4),
            }
            if len({(x.lr, x.weight_decay) for x in cfgs}) > 1:
                results["group"]["lrs"] = [x.lr for x in cfgs]
                results["group"]["weight_decays"] = [x.weight_decay for x in cfgs]
            results["train_seconds"] = round(fitted.train_seconds / k_runs, 4)
            results["total_seconds"] = round(fitted.total_seconds / k_runs, 4)
        outputs.append(RunOutput(results, decoder_checkpoint(store, c, fitted, results), logits[:, k : k + 1]))
    return outputs


def train_encoder_mode(
    store: FeatureStore,
    mode: str,
    cfg: TrainConfig,
    plan: Plan,
    encoders: dict[str, AnyEncoder],
    device: torch.device,
    progress: EpochCallback | None = None,
    graphs: bool | None = None,
    data: SharedSplits | None = None,
) -> RunOutput:
    """One run of an encoder mode (E, Es, F, FI): the encoder ``encoders[MODES[mode].encoder]`` (``ssl`` or
    ``init``; a copy is trained, the one given is left as it was) runs on the store's images at every step.
    ``graphs``: as `fit_group`'s. ``data``: the store's images already on the device (`load_splits` with
    ``images``, holding at least this run's rows), else read here."""
    spec = MODES[mode]
    rows = select_rows(store, plan, cfg.seed)
    if data is None:
        data = load_splits(store, [(cfg, rows)], device, images=True)
    tp, vp = data.positions("train", rows.train_rows), data.positions("val", rows.val_rows)
    encoder = copy.deepcopy(encoders[spec.encoder]).to(device)
    sources = {
        "train": EncoderFeatures(encoder, data.train_inputs[tp], spec.trainable),
        "val": EncoderFeatures(encoder, data.val_inputs[vp], False),
        "test": EncoderFeatures(encoder, data.test_inputs, False),
    }
    decoder = seeded_decoder(cfg, encoder.width, encoder.patch_size).to(device)
    run = RunInputs(cfg.seed, sources["train"], data.train_masks[tp], sources["val"], data.val_masks[vp])
    fitted = fit(decoder, run, plan, cfg, device, progress, graphs=graphs)
    decoder.load_state_dict(fitted.best.weights["decoder"])
    if fitted.best.weights["encoder"] is not None:
        encoder.load_state_dict(fitted.best.weights["encoder"])
    logits = predict_logits(decoder, [sources["test"]], len(rows.test_rows), cfg.eval_batch_size, device)
    test = score_test(store, logits, rows, cfg)
    return RunOutput(results_dict(mode, cfg, rows, fitted, test, device, plan), None, logits)


def train_mode(
    store: FeatureStore,
    mode: str,
    cfgs: list[TrainConfig],
    plan: Plan,
    encoders: dict[str, AnyEncoder],
    device: torch.device,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    graphs: bool | None = None,
    data: SharedSplits | None = None,
) -> list[RunOutput]:
    """The runs of one mode and size, one per config: grouped from the store, or one encoder run each.
    ``graphs``: as `fit_group`'s; ``data``: the rows already read (features for C, images for encoder modes)."""
    if MODES[mode].reads_store:
        return train_group_from_store(store, cfgs, device, progress, checkpointer, plan, data, graphs)
    return [train_encoder_mode(store, mode, c, plan, encoders, device, progress, graphs, data) for c in cfgs]


def original_masks(store: FeatureStore, ids: list[str]) -> list[np.ndarray]:
    """The truth masks of ``ids`` at their original resolution, from the dataset the store was made of."""
    dataset = store.meta["dataset"]
    root = Path(store.meta.get("dataset_root", ""))
    if not root.is_dir():
        raise FeatcacheError(
            f"--eval-size original reads the masks from {root}, which is not there; use --eval-size 224"
        )
    split_cfg = dataset.get("split_config")
    index = find_samples(root, SplitConfig(**split_cfg) if split_cfg else None)
    if index.fingerprint() != dataset["fingerprint"]:
        raise FeatcacheError(
            f"the dataset at {root} changed since {store.path} was extracted; re-extract it or use --eval-size 224"
        )
    by_id = {s.id: s for s in index.samples}
    return [load_mask_full(by_id[i].mask) for i in ids]


def score_logits(logits: torch.Tensor, masks: torch.Tensor | list[np.ndarray], orig: bool) -> dict[str, torch.Tensor]:
    """Per-image scores (study convention) of logits ``[n, 1, S, S]`` against masks at S or at original size."""
    if not orig:
        counts = confusion(torch.sigmoid(logits[:, 0]), masks.cpu())
    else:
        rows = []
        for logit, mask in zip(logits, masks, strict=True):
            up = F.interpolate(logit[None], size=mask.shape, mode="bilinear", align_corners=False)
            rows.append(confusion(torch.sigmoid(up[:, 0]), torch.from_numpy(mask)[None]))
        counts = torch.cat(rows)
    return scores(counts, "study")


def score_test(store: FeatureStore, logits: torch.Tensor, rows: RunData, cfg: TrainConfig) -> dict[str, float]:
    """Mean test metrics of logits ``[n_test, 1, S, S]``, at S or at each image's original size."""
    if cfg.eval_size == "original":
        masks = original_masks(store, [store.ids[i] for i in rows.test_rows])
    else:
        masks = store.masks(rows.test_rows)
    return mean_scores(score_logits(logits, masks, cfg.eval_size == "original"))


def results_dict(
    mode: str,
    cfg: TrainConfig,
    rows: RunData,
    fit_result: FitResult,
    test: dict[str, float],
    device: torch.device,
    plan: Plan,
) -> dict:
    """The ``results.json`` schema of docs/design.md, plus what makes a run reproducible."""
    return {
        "mode": mode,
        "size": cfg.size,
        "seed": cfg.seed,
        "val_size": plan.val_size,
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "best_epoch": fit_result.best.epoch,
        "best_val_loss": fit_result.best.val_loss,
        "train_seconds": round(fit_result.train_seconds, 4),
        "total_seconds": round(fit_result.total_seconds, 4),
        "cuda_graphs": fit_result.cuda_graphs,
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
        "state_dict": fit_result.best.weights["decoder"],
        "encoder_state_dict": fit_result.best.weights["encoder"],
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
