import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featcache.core.errors import FeatcacheError, OptionError
from featcache.data import load_image
from featcache.models import EncoderSpec
from featcache.results.evaluate import EvaluateConfig, evaluate_dirs
from featcache.results.predict import PREVIEW_LONG_SIDE, PredictConfig, load_run, predict
from featcache.train import train_decoder
from tests.helpers import CPU, quick_sweep, table_rows


def run_predict(run_dir, images, out, **options):
    return predict(PredictConfig(run_dir=run_dir, images=list(images), out=out, **options), ctx=CPU)


@pytest.fixture(scope="module")
def trained_run(micro_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_decoder(quick_sweep(micro_store, out), ctx=CPU)
    return out


def test_masks_at_original_resolution_with_overlays(trained_run, synth_root, tmp_path):
    test_images = synth_root / "ISIC-2017_Test_v2_Data"
    truth = synth_root / "ISIC-2017_Test_v2_Part1_GroundTruth"
    predictions = run_predict(trained_run, [test_images], tmp_path / "pred", truth=truth, overlays="full")
    assert len(predictions) == 6
    for p in predictions:
        mask = np.asarray(Image.open(p.mask))
        with Image.open(p.image) as img:
            assert mask.shape == (img.height, img.width)
        assert set(np.unique(mask)) <= {0, 255}
        overlay = np.asarray(Image.open(p.overlay))
        assert overlay.shape == (*mask.shape, 3)
        assert ((overlay == [255, 0, 0]).all(-1)).any()  # the truth outline is drawn
    scored = evaluate_dirs(EvaluateConfig(tmp_path / "pred", truth))  # the output folder is directly scorable
    assert len(scored.per_image) == 6


def test_truth_scores_each_prediction_as_evaluate_does(trained_run, synth_root, tmp_path, cli):
    test_images = synth_root / "ISIC-2017_Test_v2_Data"
    truth = synth_root / "ISIC-2017_Test_v2_Part1_GroundTruth"
    predictions = run_predict(trained_run, [test_images], tmp_path / "pred", truth=truth, overlays="none")
    scored = evaluate_dirs(EvaluateConfig(tmp_path / "pred", truth))
    by_id = {row["id"]: row for row in scored.per_image}
    for p in predictions:
        stem = p.image.stem
        assert p.scores["iou"] == pytest.approx(by_id[stem]["iou"]) and p.scores["dice"] == pytest.approx(
            by_id[stem]["dice"]
        )
    written = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert written["mean"]["iou"] == pytest.approx(scored.mean["iou"]) and len(written["per_image"]) == 6
    assert (tmp_path / "pred" / "scores.csv").read_text().count("\n") == 7
    result = cli("predict", trained_run, test_images, "--truth", truth, "--out", tmp_path / "cli", "--overlays", "none")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows[-1][0] == "mean" and rows[-1][2:] == [f"{scored.mean['iou']:.4f}", f"{scored.mean['dice']:.4f}"]
    assert "scores.csv" in result.stderr


def test_rebuilt_encoder_must_have_the_same_weights():
    from featcache.models import build_encoder, record_of

    record = record_of(build_encoder("vit_micro", seed=0))
    EncoderSpec.recorded(record).build()
    record.weights_sha256 = "0" * 64
    with pytest.raises(FeatcacheError, match="has other weights .* than the one recorded"):
        EncoderSpec.recorded(record).build()


def test_missing_inputs(trained_run, synth_root, tmp_path):
    with pytest.raises(FeatcacheError, match="does not exist"):
        run_predict(trained_run, [tmp_path / "nope.jpg"], tmp_path / "out")
    with pytest.raises(FeatcacheError, match="no images to predict"):
        run_predict(trained_run, [tmp_path], tmp_path / "out")
    with pytest.raises(FeatcacheError, match="no decoder.pt"):
        run_predict(tmp_path, [synth_root / "ISIC-2017_Test_v2_Data"], tmp_path / "out")


def test_encoder_file_is_recorded_absolute_and_can_be_pointed_to_when_moved(synth_root, tmp_path, monkeypatch):
    from featcache.models import build_encoder
    from featcache.store import FeatureStore
    from featcache.store.extract import extract
    from featcache.train import SweepConfig
    from tests.helpers import extract_config

    torch.save(build_encoder("vit_micro", "random", seed=3).state_dict(), tmp_path / "enc.pth")
    monkeypatch.chdir(tmp_path)
    extract(extract_config(synth_root, "s.zarr", encoder="enc.pth", image_size=32, views="identity"), ctx=CPU)
    with FeatureStore.open(tmp_path / "s.zarr") as store:
        assert store.record.encoder.source.file == str(tmp_path / "enc.pth")
    cfg = SweepConfig(
        store=str(tmp_path / "s.zarr"), out=tmp_path / "run", size=4, seeds=(0,), epochs=1, batch_size=2, val_size=2
    )
    train_decoder(dataclasses.replace(cfg, augment="none"), ctx=CPU)
    (tmp_path / "enc.pth").rename(tmp_path / "moved.pth")
    image = next((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))
    with pytest.raises(
        FeatcacheError, match=r"enc.pth that the features were extracted with are not there; pass --encoder"
    ):
        run_predict(tmp_path / "run", [image], tmp_path / "p")
    assert len(run_predict(tmp_path / "run", [image], tmp_path / "p", encoder=tmp_path / "moved.pth")) == 1
    torch.save(build_encoder("vit_micro", "random", seed=4).state_dict(), tmp_path / "other.pth")
    with pytest.raises(
        FeatcacheError,
        match=r"^--encoder \S+other.pth holds other weights .*; pass the weights file the store was extracted with "
        r"\(recorded as \S+enc.pth, no longer there",
    ):
        run_predict(tmp_path / "run", [image], tmp_path / "p", encoder=tmp_path / "other.pth")


def _probabilities(run_dir, image):
    """sigmoid of the logits upsampled to the image's resolution, float [H, W], computed as predict did before."""
    run = load_run(run_dir, encoder_weights=None, device=torch.device("cpu"))
    x = torch.from_numpy(load_image(image, run.checkpoint.store.preprocessing.size))[None].float().div_(255)
    with torch.no_grad(), Image.open(image) as img:
        logits = run.decoder(run.encoder(x))
        logits = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[0, 0].numpy()


@pytest.fixture(scope="module")
def large_image(synth_root, tmp_path_factory):
    """One test image enlarged to 1500 x 1200 (width x height), and a small one as it is."""
    small = sorted((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))[0]
    folder = tmp_path_factory.mktemp("images")
    with Image.open(small) as img:
        img.resize((1500, 1200), Image.Resampling.BILINEAR).save(folder / "ISIC_0099999.jpg", quality=90)
    shutil.copy(small, folder / small.name)
    return folder


def test_overlay_modes_and_masks_that_do_not_depend_on_them(trained_run, large_image, tmp_path):
    images = sorted(large_image.glob("*.jpg"))
    # a threshold that splits each image's pixels, so that the masks compare something
    threshold = round(float(np.median(_probabilities(trained_run, images[0]))), 3)
    runs = {
        mode: run_predict(trained_run, [large_image], tmp_path / mode, threshold=threshold, overlays=mode)
        for mode in ("preview", "full", "none")
    }
    for i, image in enumerate(images):
        expected = _probabilities(trained_run, image) > threshold
        assert 0 < expected.mean() < 1
        for mode, predictions in runs.items():
            assert predictions[i].image == image
            with Image.open(predictions[i].mask) as mask:
                assert mask.mode == "L"
                assert np.array_equal(np.asarray(mask), expected * np.uint8(255)), mode
            assert predictions[i].lesion_fraction == pytest.approx(expected.mean())
    large, small = images[1], images[0]
    with Image.open(runs["preview"][1].overlay) as preview:
        assert runs["preview"][1].overlay.name == "ISIC_0099999_overlay.jpg"
        assert max(preview.size) == PREVIEW_LONG_SIDE and preview.size == (1024, round(1200 * 1024 / 1500))
    with Image.open(runs["full"][1].overlay) as full, Image.open(large) as img:
        assert runs["full"][1].overlay.name == "ISIC_0099999_overlay.png" and full.size == img.size
    with Image.open(runs["preview"][0].overlay) as preview, Image.open(runs["full"][0].overlay) as full:
        assert preview.size == full.size  # a small image is not enlarged
        green = (np.asarray(full) == [0, 255, 0]).all(-1)  # the prediction's outline, exact in the PNG
        drawn = np.asarray(preview, dtype=float)[green].mean(0)  # the same pixels of the JPEG
        assert green.any() and drawn[1] > 200 and drawn[0] < 60 and drawn[2] < 60, (small, drawn)
    assert all(p.overlay is None for p in runs["none"]) and not (tmp_path / "none" / "overlays").exists()


def _named_images(synth_root, folder, names):
    source = sorted((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))[0]
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as img:
            img.save(folder / name)
    return [folder / name for name in names]


def test_inputs_that_share_a_stem_are_refused_before_any_work(trained_run, synth_root, tmp_path):
    a, b = _named_images(synth_root, tmp_path, ["a/img.jpg", "b/img.jpg"])
    message = r"a/img.jpg and .*b/img.jpg would both be written as img_segmentation.png; pass them in separate runs"
    with pytest.raises(FeatcacheError, match=message + " with different --out"):
        run_predict(trained_run, [a, b], tmp_path / "out")
    _named_images(synth_root, tmp_path, ["c/x.jpg", "c/X.png"])
    with pytest.raises(FeatcacheError, match=r"X.png and .*x.jpg would both be written as x_segmentation.png on disks"):
        run_predict(trained_run, [tmp_path / "c"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert len(run_predict(trained_run, [a, tmp_path / "a", a], tmp_path / "out")) == 1  # the same file


def test_cli_refuses_a_shared_stem_in_one_line(trained_run, synth_root, tmp_path, cli):
    a, b = _named_images(synth_root, tmp_path, ["a/img.jpg", "b/img.jpg"])
    result = cli("predict", trained_run, a, b, "--out", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "pass them in separate runs" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_overlay_options_and_a_missing_truth_stop_before_writing(trained_run, synth_root, tmp_path):
    images = synth_root / "ISIC-2017_Test_v2_Data"
    with pytest.raises(OptionError, match=re.escape("--overlays thumbnail is not one of preview | full | none")):
        run_predict(trained_run, [images], tmp_path / "out", overlays="thumbnail")
    truth = tmp_path / "truth"
    shutil.copytree(synth_root / "ISIC-2017_Test_v2_Part1_GroundTruth", truth)
    sorted(truth.iterdir())[-1].unlink()
    with pytest.raises(FeatcacheError, match="no truth mask for ISIC_"):
        run_predict(trained_run, [images], tmp_path / "out", truth=truth)
    assert not (tmp_path / "out").exists()
