"""timm encoders, without the network: tiny models built with pretrained=False and small overrides."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.models import build_encoder, record_of, weights_sha256
from featcache.results import PredictConfig
from featcache.results.predict import predict
from featcache.store import FeatureStore, store_info
from featcache.store.extract import extract
from featcache.train import PretrainConfig, TrainConfig, compare_e2e, train_decoder
from featcache.train.decoder_fit import RunInputs, fit
from featcache.train.pretrain import pretrain
from featcache.train.rows import select_rows
from featcache.train.run import seeded_decoder
from featcache.train.sources import EncoderFeatures, StoreFeatures
from tests.helpers import CPU, extract_config, quick_compare, quick_sweep

pytest.importorskip("timm")

#: A patch-14 DINOv2 with 4 registers (5 prefix tokens), 2 blocks of width 32.
DINO = "timm:vit_small_patch14_reg4_dinov2.lvd142m"
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 56}


def timm_config(data, out, **overrides):
    options = dict(encoder=DINO, encoder_weights="random", model_kwargs=TINY, image_size=56, dtype="float32")
    return extract_config(data, out, **{**options, **overrides})


@pytest.fixture(scope="module")
def timm_store(synth_root, tmp_path_factory):
    """A float32 store (flip views) of the tiny DINOv2 at 56 px (a 4x4 grid), both blocks."""
    out = tmp_path_factory.mktemp("timm") / "dino.zarr"
    extract(timm_config(synth_root, out, layers=(1, 2)), ctx=CPU)
    return out


def test_store_records_the_timm_model(timm_store):
    import timm

    with FeatureStore.open(timm_store) as store:
        enc = store.record.encoder
        assert store.backend["features"].shape == (24, 4, 2 * 32, 4, 4)
        assert store.record.grid == [4, 4] and store.patch_size == 14 and store.layers == (1, 2)
        assert enc.library == "timm" and enc.library_version == timm.__version__
        assert enc.model == DINO[5:] and enc.pretrained_tag == "lvd142m"
        assert enc.config["patch_size"] == 14 and enc.config["num_prefix_tokens"] == 5
        assert enc.normalisation["mean"] == pytest.approx([0.485, 0.456, 0.406])
        assert enc.source.to_json() == {"kind": "random", "seed": 0} and len(enc.weights_sha256) == 64
        rebuilt = build_encoder(DINO, "random", seed=0, model_kwargs=TINY, layers=(1, 2))
        assert weights_sha256(rebuilt) == enc.weights_sha256
        # Prefix tokens dropped: the stored grid is the image's patches, exactly what the model computes.
        with torch.no_grad():
            again = rebuilt(store.images([0]).float() / 255)
        torch.testing.assert_close(again, store.features([0], identity_only=True)[:, 0], rtol=1e-4, atol=1e-4)
        # The last block is the model's final normed output, its patch tokens (after the 5 prefix tokens).
        x = (store.images([0]).float() / 255 - rebuilt.mean) / rebuilt.std
        with torch.no_grad():
            tokens = rebuilt.model.forward_features(x)[:, 5:]
        torch.testing.assert_close(again[:, 32:], tokens.transpose(1, 2).reshape(1, 32, 4, 4), rtol=1e-5, atol=1e-5)
    info = store_info(str(timm_store))
    assert 0 < info.flip_check_cos["mean"] < 1 and info.patch_size == 14


def test_normalisation_comes_from_the_pretrained_cfg():
    clip = build_encoder(
        "timm:vit_base_patch16_clip_224.openai",
        "random",
        model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32},
    )
    mean = record_of(clip).normalisation["mean"]
    assert mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    torch.testing.assert_close(clip.mean.flatten(), torch.tensor(mean))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_offline_weights_file(tmp_path, suffix):
    source = build_encoder(DINO, "random", seed=5, model_kwargs=TINY)
    path = tmp_path / f"dino{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = build_encoder(DINO, path, model_kwargs=TINY)
    assert weights_sha256(loaded) == weights_sha256(source)
    assert loaded.source.kind == "file" and len(loaded.source.sha256) == 64
    with pytest.raises(FeatcacheError, match="does not hold weights of timm:") as info:
        build_encoder(DINO, path, model_kwargs={**TINY, "embed_dim": 64})
    assert "\n" not in str(info.value)


def test_pretrained_weights_out_of_reach_are_one_line(synth_root, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = cli("extract", synth_root, "--out", tmp_path / "s.zarr", "--encoder", DINO, "--workers", "0")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "--encoder-weights FILE" in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_missing_timm_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[timm\]'"):
        build_encoder(DINO, "random")


def test_unknown_model_and_mixed_options_are_refused(synth_root, tmp_path):
    with pytest.raises(FeatcacheError, match="timm has no model 'no_such_model'"):
        build_encoder("timm:no_such_model", "random")
    with pytest.raises(FeatcacheError, match="--encoder-weights goes with --encoder timm:NAME"):
        extract(extract_config(synth_root, tmp_path / "x.zarr", encoder_weights="random"), ctx=CPU)
    with pytest.raises(FeatcacheError, match="must be a multiple of 14"):
        extract(timm_config(synth_root, tmp_path / "y.zarr", image_size=64), ctx=CPU)


def test_store_mode_equals_the_frozen_timm_encoder(timm_store):
    """C (stored exact flip views) and F (the timm encoder recomputing flipped images) train alike."""
    cfg = TrainConfig(size=8, epochs=3, batch_size=3, val_size=4, seed=1)
    encoder = build_encoder(DINO, "random", seed=0, model_kwargs=TINY, layers=(1, 2))
    with FeatureStore.open(timm_store) as store:
        plan = cfg.plan(store)
        rows = select_rows(store, plan, seed=1)
        masks_train, masks_val = store.masks(rows.train_rows), store.masks(rows.val_rows)

        def run(source: object) -> RunInputs:
            return RunInputs(1, source, masks_train, StoreFeatures(store.features(rows.val_rows), "none"), masks_val)

        cached = seeded_decoder(cfg, 64, 14)
        from_store = fit(
            cached, run(StoreFeatures(store.features(rows.train_rows), "exact")), plan=plan, cfg=cfg, ctx=CPU
        )
        recomputed = seeded_decoder(cfg, 64, 14)
        frozen = RunInputs(
            1,
            EncoderFeatures(encoder, store.images(rows.train_rows), trainable=False),
            masks_train,
            EncoderFeatures(encoder, store.images(rows.val_rows), trainable=False),
            masks_val,
        )
        from_encoder = fit(recomputed, frozen, plan=plan, cfg=cfg, ctx=CPU)
        approx = seeded_decoder(cfg, 64, 14)
        fit(
            approx,
            run(StoreFeatures(store.features(rows.train_rows), "feature-flip")),
            plan=plan,
            cfg=dataclasses.replace(cfg, augment="feature-flip"),
            ctx=CPU,
        )
    np.testing.assert_allclose(from_store.history["train_loss"], from_encoder.history["train_loss"], rtol=1e-4)
    for name, value in cached.state_dict().items():
        torch.testing.assert_close(value, recomputed.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.allclose(approx.layers[0].weight, cached.layers[0].weight, rtol=1e-4, atol=1e-5)


def test_every_mode_runs_with_a_timm_encoder(timm_store, tmp_path):
    cfg = quick_compare(
        timm_store,
        tmp_path / "cmp",
        sizes=(6,),
        seeds=(0,),
        modes=("E", "Es", "F", "FI", "C"),
        batch_size=3,
        e_init="random",
        layers=(-1,),
    )
    result = compare_e2e(cfg, ctx=CPU)
    runs = {r.mode: r for r in result.results}
    assert set(runs) == {"E", "Es", "F", "FI", "C"}
    np.testing.assert_allclose(runs["C"].history.val_loss, runs["F"].history.val_loss, rtol=1e-4)
    assert tuple(runs["C"].config["layers"]) == (-1,)
    assert "features of block 2 of 2" in result.report.read_text()


def test_grouped_seeds_and_predict_with_a_timm_encoder(timm_store, synth_root, tmp_path):
    options = dict(size=6, epochs=2, batch_size=3, val_size=3, lrs=(0.01,))
    grouped = train_decoder(quick_sweep(timm_store, tmp_path / "g", grouped=True, **options), ctx=CPU)
    alone = train_decoder(quick_sweep(timm_store, tmp_path / "s", grouped=False, **options), ctx=CPU)
    for a, b in zip(grouped.results, alone.results, strict=True):
        np.testing.assert_allclose(a.history.val_loss, b.history.val_loss, rtol=1e-4)
    image = sorted((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))[0]
    cfg = PredictConfig(run_dir=tmp_path / "s" / "seed-0", images=[image], out=tmp_path / "pred", overlays="none")
    [made] = predict(cfg, ctx=CPU)
    from PIL import Image

    with Image.open(made.mask) as mask, Image.open(image) as img:
        assert mask.size == img.size


def test_pretrain_from_a_timm_model(synth_root, tmp_path):
    out = tmp_path / "enc.pt"
    pretrain(
        PretrainConfig(
            data=synth_root,
            out=out,
            init=DINO,
            init_weights="random",
            model_kwargs=TINY,
            epochs=1,
            batch_size=4,
            image_size=28,
        ),
        ctx=CPU,
    )
    encoder = build_encoder("vit_b_16", out)
    assert encoder.arch == DINO and encoder.source.kind == "featcache"
    assert encoder.source.init.kind == "random" and encoder(torch.rand(1, 3, 28, 28)).shape == (1, 32, 2, 2)


def test_cli_extract_and_bench_with_a_timm_encoder(synth_root, tmp_path, cli):
    kwargs = [a for k, v in TINY.items() for a in ("--model-kwargs", f"{k}={v}")]
    out = tmp_path / "s.h5"
    result = cli(
        "extract",
        synth_root,
        "--out",
        out,
        "--encoder",
        DINO,
        "--encoder-weights",
        "random",
        *kwargs,
        "--image-size",
        "56",
        "--layers",
        "-2,-1",
        "--views",
        "flips",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(cli("info", out, "--json").stdout)
    assert summary["shapes"]["features"] == [24, 4, 64, 4, 4] and summary["layers"] == [1, 2]
    assert 0 < summary["flip_check_cos"]["mean"] < 1
