"""featcache.train.decoder_fit: the decoder fit, its eager CPU loop, and the cache changing nothing."""

import dataclasses

import numpy as np
import pytest
import torch

from featcache.models.spec import build_encoder
from featcache.store.feature_store import FeatureStore
from featcache.train.decoder_fit import RunInputs, fit
from featcache.train.rows import select_rows
from featcache.train.run import seeded_decoder
from featcache.train.sources import EncoderFeatures, StoreFeatures
from tests.helpers import (
    CPU,
    quick_train,
)


def test_the_cache_changes_nothing_but_speed(micro_store):
    """A decoder trained from a float32 store with exact flips ends where one trained with the frozen
    encoder recomputing features of the flipped images at every step ends (same seed)."""
    cfg = quick_train(epochs=4, batch_size=3, seed=2)
    with FeatureStore.open(micro_store) as store:
        plan = cfg.plan(store)
        rows = select_rows(store, plan, seed=2)
        masks_train, masks_val = store.masks(rows.train_rows), store.masks(rows.val_rows)
        cached = seeded_decoder(cfg, 32)
        from_store = fit(
            cached,
            RunInputs(
                2,
                StoreFeatures(store.features(rows.train_rows), "exact"),
                masks_train,
                StoreFeatures(store.features(rows.val_rows), "none"),
                masks_val,
            ),
            plan=plan,
            cfg=cfg,
            ctx=CPU,
        )
        encoder = build_encoder("vit_micro", "random", seed=0)
        recomputed = seeded_decoder(cfg, 32)
        from_encoder = fit(
            recomputed,
            RunInputs(
                2,
                EncoderFeatures(encoder, store.images(rows.train_rows), trainable=False),
                masks_train,
                EncoderFeatures(encoder, store.images(rows.val_rows), trainable=False),
                masks_val,
            ),
            plan=plan,
            cfg=cfg,
            ctx=CPU,
        )
    assert from_store.best.epoch == from_encoder.best.epoch
    np.testing.assert_allclose(from_store.history["train_loss"], from_encoder.history["train_loss"], rtol=1e-4)
    for name, value in cached.state_dict().items():
        torch.testing.assert_close(value, recomputed.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)
    # The comparison has teeth: with feature-space flips instead of exact views the weights differ.
    approx = seeded_decoder(cfg, 32)
    with FeatureStore.open(micro_store) as store:
        fit(
            approx,
            RunInputs(
                2,
                StoreFeatures(store.features(rows.train_rows), "feature-flip"),
                masks_train,
                StoreFeatures(store.features(rows.val_rows), "none"),
                masks_val,
            ),
            plan=plan,
            cfg=dataclasses.replace(cfg, augment="feature-flip"),
            ctx=CPU,
        )
    assert not torch.allclose(approx.layers[0].weight, cached.layers[0].weight, rtol=1e-4, atol=1e-5)


def test_the_cpu_loop_runs_eagerly_and_times_every_epoch(micro_store):
    with FeatureStore.open(micro_store) as store:
        cfg = quick_train(epochs=3)
        rows = select_rows(store, cfg.plan(store), cfg.seed)
        features = StoreFeatures(store.features(rows.train_rows), cfg.augment)
        val = StoreFeatures(store.features(rows.val_rows, identity_only=True), "none")
        run = RunInputs(0, features, store.masks(rows.train_rows), val, store.masks(rows.val_rows))
        decoder = seeded_decoder(cfg, store.feature_width(), store.patch_size)
        with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
            fit(decoder, run, plan=cfg.plan(store), cfg=cfg, ctx=dataclasses.replace(CPU, cuda_graphs=True))
        fitted = fit(decoder, run, plan=cfg.plan(store), cfg=cfg, ctx=CPU)
    assert len(fitted.epoch_train_seconds) == 3 and sum(fitted.epoch_train_seconds) == pytest.approx(
        fitted.train_seconds
    )
    assert all(v.device.type == "cpu" for v in fitted.best.weights["decoder"].values())
