import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer

from featcache.data import find_samples
from featcache.errors import FeatcacheError
from featcache.models import (
    ARCHITECTURES,
    ENCODER_CHECKPOINT_FORMAT,
    ReconstructionDecoder,
    build_encoder,
    encoder_from_provenance,
    file_sha256,
    weights_sha256,
)
from featcache.pretrain import PretrainConfig, load_images, noisy_batches, pretrain, validation_loss

# lr 6e-3 makes the micro ViT's validation loss non-monotone here, so the kept epoch is usually not the last.
QUICK = dict(arch="vit_micro", init="random", epochs=3, batch_size=4, lr=6e-3, image_size=32, workers=0, device="cpu")


def quick_config(data, out, **overrides) -> PretrainConfig:
    return PretrainConfig(data=data, out=out, **{**QUICK, **overrides})


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    """One 3-epoch pretraining run of the micro ViT at 32 px: (config, report, checkpoint)."""
    cfg = quick_config(synth_root, tmp_path_factory.mktemp("pretrain") / "ss.pt")
    report = pretrain(cfg, progress=False)
    return cfg, report, torch.load(cfg.out, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_round_trips_through_build_encoder(run):
    cfg, report, ckpt = run
    assert ckpt["format"] == ENCODER_CHECKPOINT_FORMAT and ckpt["arch"] == "vit_micro"
    assert ckpt["config"] == dataclasses.asdict(ARCHITECTURES["vit_micro"])
    assert ckpt["config_pretrain"]["data"] == str(cfg.data) and ckpt["config_pretrain"]["lr"] == cfg.lr
    encoder = build_encoder("vit_b_16", cfg.out)  # the checkpoint's architecture wins
    assert encoder.arch == "vit_micro"
    assert_same_weights(encoder.state_dict(), ckpt["state_dict"])
    start = build_encoder("vit_micro", "random", seed=cfg.seed)
    assert ckpt["init"] == {"kind": "random", "seed": 0, "weights_sha256": weights_sha256(start)}
    assert encoder.source["kind"] == "featcache" and encoder.source["init"] == ckpt["init"]
    assert weights_sha256(encoder_from_provenance("vit_micro", ckpt["init"], ckpt["init"]["weights_sha256"])) == weights_sha256(start)
    assert weights_sha256(encoder) != weights_sha256(start)  # it trained

    # The saved weights are the kept epoch's: they reproduce its validation loss on the fixed noise.
    decoder = ReconstructionDecoder(encoder.width)
    decoder.load_state_dict(ckpt["decoder_state_dict"])
    val = load_images(find_samples(cfg.data, cfg.split).split("val"), cfg.image_size, 4, 0)
    loss = validation_loss(encoder, decoder, val, cfg.batch_size, cfg.noise_std, cfg.seed)
    assert float(loss) == pytest.approx(ckpt["history"]["val_loss"][ckpt["best_epoch"] - 1], rel=1e-6)


def test_history_best_epoch_figures_and_report(run):
    cfg, report, ckpt = run
    history = ckpt["history"]
    assert len(history["train_loss"]) == len(history["val_loss"]) == cfg.epochs
    assert ckpt["best_epoch"] == int(np.argmin(history["val_loss"])) + 1 == report.best_epoch
    assert report.best_val_loss == min(history["val_loss"]) == ckpt["best_val_loss"]
    assert 0 < report.seconds <= report.total_seconds and ckpt["seconds"] == report.seconds
    saved = json.loads(report.history.read_text())
    assert report.history.name == "ss_history.json"
    assert saved["history"] == history and saved["best_epoch"] == report.best_epoch
    assert [p.name for p in report.figures] == ["ss_reconstructions.png", "ss_loss.png"]
    for path in report.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()


def test_same_config_same_history_and_prefix_keeps_the_same_weights(run, tmp_path):
    cfg, _, ckpt = run
    again = pretrain(dataclasses.replace(cfg, out=tmp_path / "again.pt"), progress=False)
    again_ckpt = torch.load(again.out, weights_only=True)
    assert again_ckpt["history"] == ckpt["history"]
    assert_same_weights(again_ckpt["state_dict"], ckpt["state_dict"])
    # A run stopped at the kept epoch ends with the weights the longer run kept.
    best = ckpt["best_epoch"]
    short = pretrain(dataclasses.replace(cfg, out=tmp_path / "short.pt", epochs=best), progress=False)
    short_ckpt = torch.load(short.out, weights_only=True)
    assert short_ckpt["history"]["val_loss"] == ckpt["history"]["val_loss"][:best]
    assert_same_weights(short_ckpt["state_dict"], ckpt["state_dict"])


def test_validation_noise_is_fixed_by_the_seed(synth_root):
    images = load_images(find_samples(synth_root).split("val"), 32, 4, 0)
    first = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=0)]
    second = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=0)]
    other = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])
    assert all(float(n.min()) >= 0 and float(n.max()) <= 1 for n in first)
    clean = torch.cat([c for c, _ in noisy_batches(images, 4, 0.1, seed=0)])
    assert 0.05 < float((torch.cat(first) - clean).std()) < 0.1  # std 0.1 before clamping


def test_init_from_torchvision_state_dict_records_its_sha256(synth_root, tmp_path):
    micro = ARCHITECTURES["vit_micro"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        vit = VisionTransformer(image_size=micro.image_size, patch_size=micro.patch_size, num_layers=micro.num_layers,
                                num_heads=micro.num_heads, hidden_dim=micro.hidden_dim, mlp_dim=micro.mlp_dim)
    weights = tmp_path / "tv_micro.pth"
    torch.save(vit.state_dict(), weights)
    report = pretrain(quick_config(synth_root, tmp_path / "from_file.pt", init=str(weights), epochs=1), progress=False)
    init = torch.load(report.out, weights_only=True)["init"]
    assert init["kind"] == "file" and init["file"] == str(weights)
    assert init["sha256"] == file_sha256(weights)
    assert init["weights_sha256"] == weights_sha256(build_encoder("vit_micro", weights))


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        (dict(arch="vit_huge"), "--arch"),
        (dict(init="/no/such/weights.pth"), "--init"),
        (dict(epochs=0), "--epochs"),
        (dict(batch_size=0), "--batch-size"),
        (dict(lr=0.0), "--lr"),
        (dict(lr=float("nan")), "--lr"),
        (dict(noise_std=-0.1), "--noise-std"),
        (dict(image_size=40), "--image-size"),
        (dict(workers=-1), "--workers"),
        (dict(seed=-1), "--seed"),
        (dict(device="tpu"), "--device"),
    ],
)
def test_out_of_range_options_name_the_option(synth_root, tmp_path, overrides, option):
    with pytest.raises(FeatcacheError, match=option) as error:
        pretrain(quick_config(synth_root, tmp_path / "x.pt", **overrides), progress=False)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.pt").exists()
