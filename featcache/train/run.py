"""A run: the C-mode runs of one size trained from the store (one seed, or several as one grouped decoder), the
encoder-mode runs, and what each leaves behind (`featcache.results.records`).

C runs read the store's features (`train_group_from_store`); encoder runs (`train_encoder_mode`) run an encoder
on the store's images; `train_mode` starts either, as `featcache.train.modes.MODES` says (Tk and Pk:
`featcache.train.tail_run`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from featcache.core.context import Context
from featcache.core.progress import EpochCallback
from featcache.core.runtime import GLOBAL_RNG, seeded
from featcache.models.decoders import build_decoder, stack_states
from featcache.models.spec import AnyEncoder
from featcache.results.degenerate import degenerate_reasons
from featcache.results.records import (
    CheckpointStore,
    DecoderCheckpoint,
    GroupShare,
    History,
    Optimiser,
    RunResults,
    TestScores,
)
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.decoder_fit import FitResult, RunInputs, fit, fit_group, predict_logits
from featcache.train.modes import MODES
from featcache.train.protocol import Plan
from featcache.train.resume import Checkpointer
from featcache.train.rows import RunData, SharedSplits, check_store_run, load_splits, select_rows
from featcache.train.scoring import score_test
from featcache.train.sources import EncoderFeatures, StoreFeatures


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
        decoder = build_decoder(cfgs[0].decoder, width, groups=len(cfgs), patch_size=patch_size)
        decoder.load_state_dict(stack_states([seeded_decoder(c, width, patch_size).state_dict() for c in cfgs]))
    return decoder


@dataclass
class RunOutput:
    """One run: its results, its checkpoint (None for encoder modes) and the test logits ``[n_test, 1, S, S]``."""

    results: RunResults
    checkpoint: DecoderCheckpoint | None
    test_logits: torch.Tensor


def train_from_store(
    store: FeatureStore,
    cfg: TrainConfig,
    device: torch.device,
    *,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
) -> RunOutput:
    """C mode, one (size, seed), decoder trained from the store's features on ``device``."""
    ctx = Context(device=device, cuda_graphs=device.type == "cuda", progress=progress is not None)
    return train_group_from_store(store, [cfg], ctx=ctx, progress=progress, checkpointer=checkpointer)[0]


def train_group_from_store(
    store: FeatureStore,
    cfgs: list[TrainConfig],
    *,
    ctx: Context,
    plan: Plan | None = None,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    data: SharedSplits | None = None,
) -> list[RunOutput]:
    """C mode, one size and several runs trained together as one grouped decoder (`fit_group`).

    The runs differ in seed and may differ in learning rate and weight decay (a grid, each run's
    own applied by `featcache.train.optim.GroupedSGD`); everything else is ``cfgs[0]``'s. ``plan``: the
    runs' plan when the caller resolved it (and checked the store) already, else resolved here. ``data``:
    the store's rows already on the device (`load_splits`, holding at least these runs' rows), else
    read here. Each run's results report its share of the group's time (``train_seconds`` divided by
    the number of runs) and the group's own under ``group``.
    """
    cfg, device = cfgs[0], ctx.device
    if plan is None:  # a caller that resolved the plan checked the store too
        plan = cfg.plan(store)
        check_store_run(store, cfg)
    rows = [select_rows(store, plan, c.seed, train_ids=c.train_ids) for c in cfgs]
    if data is None:
        data = load_splits(store, list(zip(cfgs, rows, strict=True)), device)
    runs = [_store_inputs(data, c, r) for c, r in zip(cfgs, rows, strict=True)]
    decoder = grouped_decoder(cfgs, store.feature_width(cfg.layers), store.patch_size).to(device)
    fits = fit_group(decoder, runs, plan=plan, cfg=cfg, ctx=ctx, progress=progress, checkpointer=checkpointer)
    decoder.load_state_dict(stack_states([f.best.weights["decoder"] for f in fits]))
    per_run = sum(p.numel() for p in decoder.parameters()) // len(cfgs)  # the groups' weights are the same size
    sources = [StoreFeatures(data.test_inputs, "none")] * len(cfgs)
    logits = predict_logits(decoder, sources, n=len(rows[0].test_rows), batch=cfg.eval_batch_size, device=device)
    outputs = []
    for k, (c, r, fitted) in enumerate(zip(cfgs, rows, fits, strict=True)):
        test = score_test(store, logits[:, k : k + 1], r, cfg=c)
        results = run_results("C", cfg=c, rows=r, fitted=fitted, test=test, plan=plan, device=device)
        results.degenerate = degenerate_reasons(test, logits[:, k] > 0)
        results.trainable_parameters = per_run
        if len(cfgs) > 1:
            _share_group_time(results, cfgs, fitted)
        outputs.append(RunOutput(results, decoder_checkpoint(store, c, fitted, results=results), logits[:, k : k + 1]))
    return outputs


def _store_inputs(data: SharedSplits, cfg: TrainConfig, rows: RunData) -> RunInputs:
    """A C run's inputs: its rows of the features read once for the group."""
    tp, vp = data.positions("train", rows.train_rows), data.positions("val", rows.val_rows)
    return RunInputs(
        seed=cfg.seed,
        train_source=StoreFeatures(data.train_inputs, cfg.augment, tp),
        train_masks=data.train_masks[tp],
        val_source=StoreFeatures(data.val_inputs, "none", vp),
        val_masks=data.val_masks[vp],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )


def _share_group_time(results: RunResults, cfgs: list[TrainConfig], fitted: FitResult) -> None:
    """A grouped run's seconds become its share of the group's; the group's own go under ``group``."""
    grid = len({(c.lr, c.weight_decay) for c in cfgs}) > 1
    results.group = GroupShare(
        runs=len(cfgs),
        seeds=[c.seed for c in cfgs],
        train_seconds=round(fitted.train_seconds, 4),
        total_seconds=round(fitted.total_seconds, 4),
        lrs=[c.lr for c in cfgs] if grid else None,
        weight_decays=[c.weight_decay for c in cfgs] if grid else None,
    )
    results.train_seconds = round(fitted.train_seconds / len(cfgs), 4)
    results.total_seconds = round(fitted.total_seconds / len(cfgs), 4)


def train_encoder_mode(
    store: FeatureStore,
    mode: str,
    cfg: TrainConfig,
    *,
    plan: Plan,
    encoders: dict[str, AnyEncoder],
    ctx: Context,
    progress: EpochCallback | None = None,
    data: SharedSplits | None = None,
) -> RunOutput:
    """One run of an encoder mode (E, Es, F, FI): the encoder ``encoders[MODES[mode].encoder]`` (``ssl`` or
    ``init``; a copy is trained, the one given is left as it was) runs on the store's images at every step.
    ``data``: the store's images already on the device (`load_splits` with ``images``, holding at least this
    run's rows), else read here."""
    spec, device = MODES[mode], ctx.device
    rows = select_rows(store, plan, cfg.seed, train_ids=cfg.train_ids)
    if data is None:
        data = load_splits(store, [(cfg, rows)], device, images=True)
    tp, vp = data.positions("train", rows.train_rows), data.positions("val", rows.val_rows)
    encoder = copy.deepcopy(encoders[spec.encoder]).to(device)
    test_source = EncoderFeatures(encoder, data.test_inputs, False)
    run = RunInputs(
        seed=cfg.seed,
        train_source=EncoderFeatures(encoder, data.train_inputs[tp], spec.trainable),
        train_masks=data.train_masks[tp],
        val_source=EncoderFeatures(encoder, data.val_inputs[vp], False),
        val_masks=data.val_masks[vp],
    )
    decoder = seeded_decoder(cfg, encoder.width, encoder.patch_size).to(device)
    fitted = fit(decoder, run, plan=plan, cfg=cfg, ctx=ctx, progress=progress)
    decoder.load_state_dict(fitted.best.weights["decoder"])
    if fitted.best.weights["encoder"] is not None:
        encoder.load_state_dict(fitted.best.weights["encoder"])
    logits = predict_logits(decoder, [test_source], n=len(rows.test_rows), batch=cfg.eval_batch_size, device=device)
    test = score_test(store, logits, rows, cfg=cfg)
    results = run_results(mode, cfg=cfg, rows=rows, fitted=fitted, test=test, plan=plan, device=device)
    results.degenerate = degenerate_reasons(test, logits[:, 0] > 0)
    trained = [*decoder.parameters(), *run.train_source.parameters()]
    results.trainable_parameters = sum(p.numel() for p in trained)
    return RunOutput(results, None, logits)


def train_mode(
    store: FeatureStore,
    mode: str,
    cfgs: list[TrainConfig],
    *,
    plan: Plan,
    encoders: dict[str, AnyEncoder],
    ctx: Context,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    data: SharedSplits | None = None,
) -> list[RunOutput]:
    """The runs of one mode and size, one per config: grouped from the store, or one encoder run each.
    ``data``: the rows already read (features for C, images for encoder modes)."""
    if MODES[mode].reads_store:
        return train_group_from_store(
            store, cfgs, ctx=ctx, plan=plan, progress=progress, checkpointer=checkpointer, data=data
        )
    return [
        train_encoder_mode(store, mode, c, plan=plan, encoders=encoders, ctx=ctx, progress=progress, data=data)
        for c in cfgs
    ]


def run_results(
    mode: str,
    *,
    cfg: TrainConfig,
    rows: RunData,
    fitted: FitResult,
    test: TestScores,
    plan: Plan,
    device: torch.device,
) -> RunResults:
    """The results of a run, as ``results.json`` keeps them."""
    return RunResults(
        mode=mode,
        size=cfg.size,
        seed=cfg.seed,
        val_size=plan.val_size,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        best_epoch=fitted.best.epoch,
        best_val_loss=fitted.best.val_loss,
        train_seconds=round(fitted.train_seconds, 4),
        total_seconds=round(fitted.total_seconds, 4),
        cuda_graphs=fitted.cuda_graphs,
        augment=cfg.augment,
        device=str(device),
        decoder=cfg.decoder,
        eval_size=cfg.eval_size,
        optimiser=Optimiser("SGD", cfg.lr, cfg.momentum, cfg.weight_decay),
        test=test,
        test_images=len(rows.test_rows),
        config=asdict(cfg),
        train_ids=rows.train_ids,
        history=History(**fitted.history),
    )


def decoder_checkpoint(
    store: FeatureStore, cfg: TrainConfig, fitted: FitResult, *, results: RunResults
) -> DecoderCheckpoint:
    """Best decoder weights with the store's record, so `featcache.results.predict` can rebuild the encoder."""
    record = store.record
    return DecoderCheckpoint(
        decoder=cfg.decoder,
        in_channels=store.feature_width(cfg.layers),
        layers=[store.layers[p] for p in store.layer_positions(cfg.layers)],
        patch_size=store.patch_size,
        state_dict=fitted.best.weights["decoder"],
        encoder_state_dict=fitted.best.weights["encoder"],
        store=CheckpointStore(
            path=str(store.path),
            encoder=record.encoder,
            preprocessing=record.preprocessing,
            dataset=record.dataset,
            dataset_root=record.dataset_root,
        ),
        config=asdict(cfg),
        results=results,
    )
