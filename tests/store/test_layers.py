"""Intermediate layers: extract --layers, FeatureStore.features(layers=...), train-decoder --layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models.spec import build_encoder
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.train.sweep import train_decoder
from tests.helpers import CPU, extract_config, quick_sweep

QUICK = dict(size=6, seeds=(0,), epochs=2, batch_size=3, val_size=3, lrs=(0.01,))


@pytest.fixture(scope="module")
def mini_stores(synth_root, tmp_path_factory):
    """float32 stores of vit_mini (4 blocks) at 32 px: blocks 1, 2 and 4; and the last block alone."""
    root = tmp_path_factory.mktemp("layers")
    layered, last = root / "layered.zarr", root / "last.zarr"
    options = dict(arch="vit_mini", image_size=32, dtype="float32")
    extract(extract_config(synth_root, layered, layers=(1, 2, -1), **options), ctx=CPU)
    extract(extract_config(synth_root, last, **options), ctx=CPU)
    return layered, last


def test_the_last_layer_is_the_final_normed_output():
    layered = build_encoder("vit_mini", "random", seed=1, layers=(1, -1))
    plain = build_encoder("vit_mini", "random", seed=1)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        feats = layered(x)
        assert feats.shape == (2, 2 * 128, 2, 3) and layered.width == 256
        torch.testing.assert_close(feats[:, 128:], plain(x), rtol=0, atol=1e-6)
        assert not torch.allclose(feats[:, :128], feats[:, 128:], atol=1e-3)


def test_store_holds_the_layers_and_reads_any_of_them(mini_stores):
    layered, last = mini_stores
    with FeatureStore.open(layered) as s, FeatureStore.open(last) as one:
        assert s.layers == (1, 2, 4) and s.record.encoder.layers == [1, 2, 4]
        assert s.backend["features"].shape == (24, 4, 3 * 128, 2, 2) and s.feature_width() == 384
        assert s.feature_width((-1,)) == 128 and s.feature_width((1, 4)) == 256
        # A one-layer store keeps the old record and layout.
        assert one.record.encoder.layers is None and one.layers == (4,)
        assert one.backend["features"].shape == (24, 4, 128, 2, 2)
        rows = [3, 0, 7]
        every = s.features(rows)
        np.testing.assert_array_equal(s.features(rows, layers=(-1,)).numpy(), one.features(rows).numpy())
        # Not contiguous: blocks 1 and 4.
        picked = s.features(rows, identity_only=True, layers=(4, 1))
        torch.testing.assert_close(picked, torch.cat([every[:, :1, :128], every[:, :1, 256:]], dim=2))
        with pytest.raises(OptionError, match=r"holds the outputs of blocks 1, 2, 4 of 4, not 3"):
            s.features(rows, layers=(3,))


def test_a_store_of_other_layers_is_not_resumed(synth_root, mini_stores):
    layered, _ = mini_stores
    with pytest.raises(FeatcacheError, match="holds another extraction .*encoder.layers"):
        extract(
            extract_config(synth_root, layered, arch="vit_mini", image_size=32, dtype="float32", layers=(2, 4)),
            ctx=CPU,
        )


def test_train_decoder_reads_the_chosen_layers(mini_stores, tmp_path):
    layered, last = mini_stores
    picked = train_decoder(quick_sweep(layered, tmp_path / "a", layers=(-1,), **QUICK), ctx=CPU)
    alone = train_decoder(quick_sweep(last, tmp_path / "b", **QUICK), ctx=CPU)
    assert picked.results[0].history == alone.results[0].history
    every = train_decoder(quick_sweep(layered, tmp_path / "c", **QUICK), ctx=CPU)
    assert every.results[0].history != alone.results[0].history
    ckpt = torch.load(tmp_path / "c" / "seed-0" / "decoder.pt", weights_only=True)
    assert ckpt["in_channels"] == 384 and ckpt["layers"] == [1, 2, 4] and ckpt["patch_size"] == 16
    assert torch.load(tmp_path / "a" / "seed-0" / "decoder.pt", weights_only=True)["in_channels"] == 128


def test_cli_layers(synth_root, mini_stores, tmp_path, cli):
    layered, _ = mini_stores
    bad = cli("train-decoder", layered, "--size", "6", "--seeds", "0", "--layers", "3", "--out", tmp_path / "r")
    assert bad.returncode == 2 and "not 3" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    out = tmp_path / "s.zarr"
    result = cli(
        "extract",
        synth_root,
        "--out",
        out,
        "--encoder",
        "random",
        "--arch",
        "vit_micro",
        "--image-size",
        "32",
        "--layers",
        "-2,-1",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    info = cli("info", out)
    assert "blocks 1, 2 of 2" in info.stdout
    too_deep = cli(
        "extract",
        synth_root,
        "--out",
        tmp_path / "t.zarr",
        "--encoder",
        "random",
        "--arch",
        "vit_micro",
        "--image-size",
        "32",
        "--layers",
        "3",
        "--workers",
        "0",
    )
    assert too_deep.returncode == 2 and "has 2 blocks" in too_deep.stderr
