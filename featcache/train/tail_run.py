"""Modes Tk and Pk: the encoder's last k blocks and final norm trained with the decoder, from the store's cached
tokens (Tk: `TokenFeatures`; the blocks below never run) or recomputed from the images at every step (Pk: a
`featcache.models.tail.PartlyFrozenEncoder`; the blocks below run frozen), optionally through LoRA adapters
(`featcache.models.lora`) instead of the blocks' own weights.

A Tk or Pk run is one network (no grouping of seeds: each run trains its own encoder blocks). Its results say
``"mode": "T2"`` with ``"train_blocks": 2``, its trainable parameters and, with LoRA, the adapters; its
``decoder.pt`` keeps the trained blocks and final norm (adapters merged) as a partial state dict of the store's
encoder, which `featcache predict` loads over the rebuilt encoder. With a float32 store and exact flips, Tk trains
exactly as Pk does: the cached tokens are what Pk's frozen blocks compute.

CUDA graphs are off for LoRA on a torchvision encoder: peft's ``MultiheadAttention`` layer swaps merged weights in
and out of the module around every forward, which a replayed graph would not do.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from featcache.core.context import Context
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.progress import EpochCallback
from featcache.core.runtime import seeded
from featcache.models.lora import LoraSummary, add_lora, import_peft, top_state
from featcache.models.spec import AnyEncoder
from featcache.models.tail import PartlyFrozenEncoder, TailEncoder, TrainedTop
from featcache.models.vit import Encoder
from featcache.results.degenerate import degenerate_reasons
from featcache.results.records import LoraRecord
from featcache.store.feature_store import FeatureStore
from featcache.train.config import TrainConfig
from featcache.train.decoder_fit import RunInputs, fit, predict_logits
from featcache.train.modes import mode_of, parse_mode
from featcache.train.protocol import Plan
from featcache.train.resume import Checkpointer
from featcache.train.rows import SharedSplits, check_store_run, load_splits, select_rows
from featcache.train.run import RunOutput, decoder_checkpoint, run_results, seeded_decoder, train_mode
from featcache.train.scoring import score_test
from featcache.train.sources import EncoderFeatures, flip_per_sample


class TokenFeatures:
    """Mode Tk's feature source: ``encoder`` (a `TailEncoder`, trained) on the cached tokens ``[n, V, T, C]``
    (rows ``positions[rows]`` when given, as `featcache.train.sources.StoreFeatures`) of a ``grid`` (h, w).

    ``exact`` reads each drawn view's own tokens (the mask is flipped to match, as for C); ``feature-flip`` flips
    the output of the identity view's tokens. The attribute is named ``encoder`` so that the decoder fit saves,
    restores and keeps the trained net as it does an encoder mode's.
    """

    def __init__(
        self, encoder: TailEncoder, tokens: torch.Tensor, *, augment: str, grid: tuple[int, int], positions=None
    ) -> None:
        self.encoder, self.tokens, self.augment, self.grid, self.positions = encoder, tokens, augment, grid, positions

    def _run(self, tokens: torch.Tensor, grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return self.encoder(tokens, self.grid)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.positions is None else self.positions[rows]

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        rows = self._rows(rows)
        if views is None:
            return self._run(self.tokens[rows, 0], True)
        if self.augment == "exact":
            return self._run(self.tokens[rows, views], True)
        return flip_per_sample(self._run(self.tokens[rows, 0], True), views)

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self._run(self.tokens[self._rows(rows), 0], False)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]

    def train(self, on: bool) -> None:
        self.encoder.train(on)


def check_top_run(store: FeatureStore, mode: str, cfg: TrainConfig) -> None:
    """Refuse, before any work, a Tk or Pk run the store or the installation cannot give: ``--layers`` other than
    the last block (a usage error), a Tk without cached tokens or with more blocks than they enter, no peft for
    LoRA."""
    source, k = mode_of(mode).source, parse_mode(mode)[1]
    depth = store.depth
    if cfg.layers is not None and sorted({b if b > 0 else depth + 1 + b for b in cfg.layers}) != [depth]:
        raise OptionError(
            f"--layers {','.join(map(str, cfg.layers))}: mode {mode} reads the encoder's final output (its last "
            f"block through the final norm); drop --layers or give -1"
        )
    if k > depth:
        raise OptionError(f"mode {mode}: {store.record.encoder.arch} has {depth} blocks; train at most {depth}")
    if source == "tokens":
        if not store.tail_tokens:
            raise FeatcacheError(
                f"{store.path} holds no cached tokens, which mode {mode} needs; extract it with "
                f"`featcache extract ... --tail-tokens {k}` (or more)"
            )
        if k > store.tail_tokens:
            raise FeatcacheError(
                f"--train-blocks {k} is more than the {store.tail_tokens} blocks whose input tokens {store.path} "
                f"holds; extract again with --tail-tokens {k} or more, or train fewer blocks"
            )
        check_store_run(store, dataclasses.replace(cfg, layers=None))  # flip views for exact
    if cfg.lora_rank is not None:
        import_peft()


def top_network(
    encoder: AnyEncoder, mode: str, cfg: TrainConfig, *, tail: int
) -> tuple[TrainedTop, LoraSummary | None]:
    """The trained network of a Tk run (a `TailEncoder` over the store's ``tail`` blocks) or a Pk run (a
    `PartlyFrozenEncoder`), copies of ``encoder``'s blocks; with ``cfg.lora_rank``, LoRA adapters on its trained
    blocks, drawn under ``cfg.seed`` (the same adapters for Tk and Pk)."""
    k = parse_mode(mode)[1]
    if mode_of(mode).source == "tokens":
        net: TrainedTop = TailEncoder(encoder, tail=tail, train_blocks=k)
    else:
        net = PartlyFrozenEncoder(encoder, train_blocks=k)
    if cfg.lora_rank is None:
        return net, None
    with seeded(cfg.seed):
        lora = add_lora(net, rank=cfg.lora_rank, alpha=cfg.lora_alpha or float(cfg.lora_rank))
    return net, lora


def _inputs(net: TrainedTop, data: SharedSplits, rows, *, cfg: TrainConfig, grid: tuple[int, int]) -> RunInputs:
    """The run's training and validation sources on the rows read once (``data``: tokens for Tk, images for Pk)."""
    tp, vp = data.positions("train", rows.train_rows), data.positions("val", rows.val_rows)
    if isinstance(net, TailEncoder):
        train = TokenFeatures(net, data.train_inputs, augment=cfg.augment, grid=grid, positions=tp)
        val = TokenFeatures(net, data.val_inputs, augment="none", grid=grid, positions=vp)
    else:
        train = EncoderFeatures(net, data.train_inputs[tp], True)
        val = EncoderFeatures(net, data.val_inputs[vp], False)
    return RunInputs(cfg.seed, train, data.train_masks[tp], val, data.val_masks[vp])


def train_top_mode(
    store: FeatureStore,
    mode: str,
    cfg: TrainConfig,
    *,
    plan: Plan,
    encoders: dict[str, AnyEncoder],
    ctx: Context,
    progress: EpochCallback | None = None,
    checkpointer: Checkpointer | None = None,
    data: SharedSplits | None = None,
) -> RunOutput:
    """One Tk or Pk run (``mode`` ``T2``, ``P1``, ...): the last k blocks of ``encoders["ssl"]`` (the store's
    encoder; copies are trained) and the decoder, on the store's cached tokens or images (``data``: read once for
    several runs, else here), resumable through ``checkpointer``."""
    device, tokens = ctx.device, mode_of(mode).source == "tokens"
    check_top_run(store, mode, cfg)
    rows = select_rows(store, plan, cfg.seed, train_ids=cfg.train_ids)
    if data is None:
        data = load_splits(store, [(cfg, rows)], device, images=not tokens, tokens=tokens)
    encoder = encoders["ssl"]
    net, lora = top_network(encoder, mode, cfg, tail=store.tail_tokens)
    net.to(device)
    grid = (int(store.record.grid[0]), int(store.record.grid[1]))
    run = _inputs(net, data, rows, cfg=cfg, grid=grid)
    decoder = seeded_decoder(cfg, net.width, net.patch_size).to(device)
    if lora is not None and isinstance(encoder, Encoder):
        ctx = dataclasses.replace(ctx, cuda_graphs=False)
    fitted = fit(decoder, run, plan=plan, cfg=cfg, ctx=ctx, progress=progress, checkpointer=checkpointer)
    decoder.load_state_dict(fitted.best.weights["decoder"])
    net.load_state_dict(fitted.best.weights["encoder"])
    test_source = (
        TokenFeatures(net, data.test_inputs, augment="none", grid=grid)
        if tokens
        else EncoderFeatures(net, data.test_inputs, False)
    )
    logits = predict_logits(decoder, [test_source], n=len(rows.test_rows), batch=cfg.eval_batch_size, device=device)
    test = score_test(store, logits, rows, cfg=cfg)
    trainable = sum(p.numel() for p in decoder.parameters()) + sum(p.numel() for p in run.train_source.parameters())
    results = run_results(mode, cfg=cfg, rows=rows, fitted=fitted, test=test, plan=plan, device=device)
    results.train_blocks, results.trainable_parameters = parse_mode(mode)[1], trainable
    results.degenerate = degenerate_reasons(test, logits[:, 0] > 0)
    if lora is not None:
        results.lora = LoraRecord(lora.rank, lora.alpha, list(lora.weights), lora.trainable)
    checkpoint = dataclasses.replace(
        decoder_checkpoint(store, cfg, fitted, results=results),
        in_channels=net.width,
        layers=[store.depth],
        encoder_state_dict={k: v.cpu() for k, v in top_state(net).items()},
    )
    return RunOutput(results, checkpoint, logits)


def train_any_mode(
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
    """`featcache.train.run.train_mode`, and for Tk and Pk one `train_top_mode` run per config (a checkpointer
    serves one run: give one config with it)."""
    if not parse_mode(mode)[1]:
        return train_mode(
            store,
            mode,
            cfgs,
            plan=plan,
            encoders=encoders,
            ctx=ctx,
            progress=progress,
            checkpointer=checkpointer,
            data=data,
        )
    if checkpointer is not None and len(cfgs) > 1:
        raise ValueError("a resume state serves one Tk or Pk run")
    return [
        train_top_mode(
            store,
            mode,
            c,
            plan=plan,
            encoders=encoders,
            ctx=ctx,
            progress=progress,
            checkpointer=checkpointer,
            data=data,
        )
        for c in cfgs
    ]
