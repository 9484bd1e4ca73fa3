import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.vision_transformer import VisionTransformer

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import find_samples
from featcache.models import EncoderSpec, WeightsSource, build_encoder, record_of
from featcache.models.decoders import ReconstructionDecoder
from featcache.models.record import ENCODER_CHECKPOINT_FORMAT
from featcache.models.vit import ARCHITECTURES
from featcache.models.weights import file_sha256, weights_sha256
from featcache.train.pretrain import load_images, noisy_batches, pretrain, resume_path, validation_loss
from featcache.train.resume import Checkpointer
from tests.helpers import CPU, quick_pretrain, run_then_sigkill


@pytest.fixture(scope="module")
def run(synth_root, tmp_path_factory):
    """One 3-epoch pretraining run of the micro ViT at 32 px: (config, report, checkpoint)."""
    cfg = quick_pretrain(synth_root, tmp_path_factory.mktemp("pretrain") / "ss.pt")
    report = pretrain(cfg, ctx=CPU)
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
    assert encoder.source.kind == "featcache" and encoder.source.init.to_json() == ckpt["init"]
    recorded = dataclasses.replace(record_of(start), source=WeightsSource.from_json(ckpt["init"]))
    assert weights_sha256(EncoderSpec.recorded(recorded).build()) == weights_sha256(start)
    assert weights_sha256(encoder) != weights_sha256(start)  # it trained

    # The saved weights are the kept epoch's: they reproduce its validation loss on the fixed noise.
    decoder = ReconstructionDecoder(encoder.width)
    decoder.load_state_dict(ckpt["decoder_state_dict"])
    val = load_images(find_samples(cfg.data, cfg.split).split("val"), cfg.image_size, 4, workers=0)
    loss = validation_loss(encoder, decoder, val, batch_size=cfg.batch_size, std=cfg.noise_std, seed=cfg.seed)
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
    again = pretrain(dataclasses.replace(cfg, out=tmp_path / "again.pt"), ctx=CPU)
    again_ckpt = torch.load(again.out, weights_only=True)
    assert again_ckpt["history"] == ckpt["history"]
    assert_same_weights(again_ckpt["state_dict"], ckpt["state_dict"])
    # A run stopped at the kept epoch ends with the weights the longer run kept.
    best = ckpt["best_epoch"]
    short = pretrain(dataclasses.replace(cfg, out=tmp_path / "short.pt", epochs=best), ctx=CPU)
    short_ckpt = torch.load(short.out, weights_only=True)
    assert short_ckpt["history"]["val_loss"] == ckpt["history"]["val_loss"][:best]
    assert_same_weights(short_ckpt["state_dict"], ckpt["state_dict"])


def test_validation_noise_is_fixed_by_the_seed(synth_root):
    images = load_images(find_samples(synth_root).split("val"), 32, 4, workers=0)
    first = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=0)]
    second = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=0)]
    other = [noisy for _, noisy in noisy_batches(images, 4, 0.1, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], other[0])
    assert all(float(n.min()) >= 0 and float(n.max()) <= 1 for n in first)
    clean = torch.cat([c for c, _ in noisy_batches(images, 4, 0.1, seed=0)])
    assert 0.05 < float((torch.cat(first) - clean).std()) < 0.1  # std 0.1 before clamping


def test_init_from_torchvision_state_dict_records_its_sha256(synth_root, tmp_path):
    micro = ARCHITECTURES["vit_micro"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        vit = VisionTransformer(
            image_size=micro.image_size,
            patch_size=micro.patch_size,
            num_layers=micro.num_layers,
            num_heads=micro.num_heads,
            hidden_dim=micro.hidden_dim,
            mlp_dim=micro.mlp_dim,
        )
    weights = tmp_path / "tv_micro.pth"
    torch.save(vit.state_dict(), weights)
    cfg = quick_pretrain(synth_root, tmp_path / "from_file.pt", init=str(weights), epochs=1)
    report = pretrain(cfg, ctx=CPU)
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
    ],
)
def test_out_of_range_options_name_the_option(synth_root, tmp_path, overrides, option):
    with pytest.raises(FeatcacheError, match=option) as error:
        pretrain(quick_pretrain(synth_root, tmp_path / "x.pt", **overrides), ctx=CPU)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.pt").exists()


def test_sigkilled_run_resumes_to_the_uninterrupted_result(run, synth_root, tmp_path, capsys):
    """Killed after epoch 2 of 3, the run resumes and ends exactly where `run` (uninterrupted) ended."""
    cfg, report, ckpt = run
    assert resume_path(tmp_path / "encoder.pt") == tmp_path / "encoder.resume.pt"
    out = tmp_path / "killed.pt"
    killed_cfg = quick_pretrain(synth_root, out)
    options = {**dataclasses.asdict(killed_cfg), "data": str(synth_root), "out": str(out)}
    run_then_sigkill(
        f"""
        import dataclasses
        from featcache.train.pretrain import PretrainConfig, pretrain
        from tests.helpers import CPU
        pretrain(PretrainConfig(**{options!r}), ctx=dataclasses.replace(CPU, checkpoint_seconds=0))
    """,
        after_saves=2,
    )  # right after the resume state of epoch 2 is written
    assert resume_path(out).is_file() and not out.exists()
    assert torch.load(resume_path(out), weights_only=True)["state"]["epoch"] == 2

    resumed = pretrain(killed_cfg, ctx=CPU)
    assert f"resuming from {resume_path(out)} (epoch 2 finished)" in capsys.readouterr().err
    assert not resume_path(out).exists()
    got = torch.load(out, weights_only=True)
    assert_same_weights(got["state_dict"], ckpt["state_dict"])
    assert_same_weights(got["decoder_state_dict"], ckpt["decoder_state_dict"])
    assert got["history"] == ckpt["history"] and len(got["history"]["val_loss"]) == cfg.epochs
    assert got["best_epoch"] == ckpt["best_epoch"] and got["best_val_loss"] == ckpt["best_val_loss"]
    saved, expected = (json.loads(r.history.read_text()) for r in (resumed, report))
    assert saved["history"] == expected["history"] and saved["best_epoch"] == expected["best_epoch"]


EVERY_EPOCH = dataclasses.replace(CPU, checkpoint_seconds=0)


def test_resume_state_of_another_run_is_refused(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "one.pt"
    with monkeypatch.context() as keep:  # as if killed after its last epoch, before its outputs
        keep.setattr(Checkpointer, "done", lambda self: None)
        first = pretrain(quick_pretrain(synth_root, out, epochs=1), ctx=EVERY_EPOCH)
    out.unlink()
    other_data = tmp_path / "other"
    shutil.copytree(synth_root, other_data)
    with open(next(other_data.rglob("*.jpg")), "ab") as image:  # another size: another fingerprint
        image.write(b"\0")
    for other in (quick_pretrain(synth_root, out, epochs=1, lr=1e-3), quick_pretrain(other_data, out, epochs=1)):
        with pytest.raises(FeatcacheError, match="delete it or choose another --out") as error:
            pretrain(other, ctx=CPU)
        assert str(resume_path(out)) in str(error.value) and "\n" not in str(error.value)
    assert resume_path(out).is_file() and not out.exists()
    # The context (device, resume-state interval) and workers do not matter: the same run resumes.
    again = pretrain(quick_pretrain(synth_root, out, epochs=1), ctx=CPU)
    assert not resume_path(out).exists()
    assert_same_weights(
        torch.load(again.out, weights_only=True)["state_dict"], torch.load(first.out, weights_only=True)["state_dict"]
    )
