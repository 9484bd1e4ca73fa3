import numpy as np
import pytest
import torch
from PIL import Image

from featcache.errors import FeatcacheError
from featcache.experiment import train_decoder
from featcache.metrics import evaluate_dirs
from featcache.models import encoder_from_provenance
from featcache.predict import outline, predict
from featcache.train import TrainConfig


@pytest.fixture(scope="module")
def trained_run(micro_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_decoder(str(micro_store), TrainConfig(size=8, epochs=3, batch_size=4, val_size=4), [0, 1], out, "cpu", progress=False)
    return out


def test_masks_at_original_resolution_with_overlays(trained_run, synth_root, tmp_path):
    test_images = synth_root / "ISIC-2017_Test_v2_Data"
    truth = synth_root / "ISIC-2017_Test_v2_Part1_GroundTruth"
    predictions = predict(trained_run, [test_images], tmp_path / "pred", truth_dir=truth, device="cpu")
    assert len(predictions) == 6
    for p in predictions:
        mask = np.asarray(Image.open(p.mask))
        with Image.open(p.image) as img:
            assert mask.shape == (img.height, img.width)
        assert set(np.unique(mask)) <= {0, 255}
        overlay = np.asarray(Image.open(p.overlay))
        assert overlay.shape == (*mask.shape, 3)
        assert ((overlay == [255, 0, 0]).all(-1)).any()  # the truth outline is drawn
    scored = evaluate_dirs(tmp_path / "pred", truth)  # the output folder is directly scorable
    assert len(scored.per_image) == 6


def test_rebuilt_encoder_must_have_the_same_weights():
    from featcache.models import build_encoder, encoder_provenance

    prov = encoder_provenance(build_encoder("vit_micro", seed=0))
    encoder_from_provenance(prov["arch"], prov["source"], prov["weights_sha256"])
    with pytest.raises(FeatcacheError, match="has other weights .* than the one recorded"):
        encoder_from_provenance(prov["arch"], prov["source"], "0" * 64)


def test_missing_inputs(trained_run, tmp_path):
    with pytest.raises(FeatcacheError, match="does not exist"):
        predict(trained_run, [tmp_path / "nope.jpg"], tmp_path / "out", device="cpu")
    with pytest.raises(FeatcacheError, match="no decoder.pt"):
        predict(tmp_path, [tmp_path], tmp_path / "out", device="cpu")


def test_outline_is_the_border():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    border = outline(mask, 1)
    assert border.sum() == 16 and not border[3, 3]


def test_encoder_file_is_recorded_absolute_and_can_be_pointed_to_when_moved(synth_root, tmp_path, monkeypatch):
    from conftest import extract_config
    from featcache.extract import extract
    from featcache.models import build_encoder
    from featcache.store import FeatureStore

    torch.save(build_encoder("vit_micro", "random", seed=3).state_dict(), tmp_path / "enc.pth")
    monkeypatch.chdir(tmp_path)
    extract(extract_config(synth_root, "s.zarr", encoder="enc.pth", image_size=32, views="identity"), progress=False)
    with FeatureStore.open(tmp_path / "s.zarr") as store:
        assert store.meta["encoder"]["source"]["file"] == str(tmp_path / "enc.pth")
    train_decoder(str(tmp_path / "s.zarr"), TrainConfig(size=4, epochs=1, batch_size=2, val_size=2, augment="none"), [0],
                  tmp_path / "run", "cpu", progress=False)
    (tmp_path / "enc.pth").rename(tmp_path / "moved.pth")
    image = next((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))
    with pytest.raises(FeatcacheError, match=r"enc.pth that the features were extracted with are not there; pass --encoder"):
        predict(tmp_path / "run", [image], tmp_path / "p", device="cpu")
    assert len(predict(tmp_path / "run", [image], tmp_path / "p", device="cpu", encoder_weights=tmp_path / "moved.pth")) == 1
    torch.save(build_encoder("vit_micro", "random", seed=4).state_dict(), tmp_path / "other.pth")
    with pytest.raises(FeatcacheError, match="has other weights"):
        predict(tmp_path / "run", [image], tmp_path / "p", device="cpu", encoder_weights=tmp_path / "other.pth")
