"""An encoder at hand is checked against the store's features, not only against the store's record of it."""

import shutil
from pathlib import Path

import pytest
import torch
import zarr

from featcache.core.errors import FeatcacheError
from featcache.models import EncoderRecord, build_encoder, record_of
from featcache.results import PredictConfig
from featcache.results.predict import predict
from featcache.store import FeatureStore
from featcache.store.encoder_check import STORAGE_TOLERANCE, check_encoder_matches, check_run_encoder
from featcache.store.extract import extract
from featcache.store.schema import seal
from featcache.train import compare_e2e, train_decoder
from tests.helpers import CPU, extract_config, one_line_error, quick_compare, quick_sweep

DEVICE = torch.device("cpu")


def forge(store: Path, out: Path, seed: int = 1) -> EncoderRecord:
    """Copy ``store`` (the random vit_micro of seed 0) to ``out``, its record claiming the encoder of ``seed``.

    Returns the claimed encoder's provenance: its weights hash and source, as an honest extraction would record them.
    """
    shutil.copytree(store, out)
    claimed = record_of(build_encoder("vit_micro", "random", seed=seed))
    group = zarr.open_group(out, mode="r+")
    meta = dict(group.attrs["featcache"])
    meta["encoder"] = claimed.to_json()
    group.attrs["featcache"] = seal(meta)  # a forger reseals: the seal proves no edit, only the features do

    return claimed


def refusal_names(message: str, store: Path, claimed: EncoderRecord) -> None:
    assert str(store) in message and claimed.describe() in message, message
    assert "relative L2" in message and "featcache extract" in message, message


def test_train_decoder_refuses_an_encoder_the_features_do_not_come_from(micro_store, tmp_path, cli):
    store = tmp_path / "forged.zarr"
    claimed = forge(micro_store, store)
    with FeatureStore.open(store) as opened:
        opened.check_encoder(claimed)  # the record alone cannot tell: it names the encoder at hand
    out = tmp_path / "run"
    with pytest.raises(FeatcacheError) as raised:
        train_decoder(quick_sweep(store, out, size=4, seeds=(0,), epochs=1, val_size=2, encoder="random"), ctx=CPU)
    refusal_names(str(raised.value), store, claimed)
    assert not out.exists()
    result = cli(
        "--device",
        "cpu",
        "train-decoder",
        store,
        "--size",
        "4",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--val-size",
        "2",
        "--encoder",
        "random",
        "--out",
        out,
    )
    refusal_names(one_line_error(result), store, claimed)


def test_compare_e2e_refuses_a_store_whose_record_names_another_encoder(micro_store, tmp_path):
    store = tmp_path / "forged.zarr"
    claimed = forge(micro_store, store)
    cfg = quick_compare(store, tmp_path / "c", sizes=(4,), seeds=(0,), modes=("F",), epochs=1, val_size=2)
    with pytest.raises(FeatcacheError) as raised:
        compare_e2e(cfg, ctx=CPU)
    refusal_names(str(raised.value), store, claimed)
    assert not (tmp_path / "c").exists()


def test_the_store_s_own_encoder_passes(micro_store, tmp_path):
    with FeatureStore.open(micro_store) as store:
        assert check_encoder_matches(store, build_encoder("vit_micro", "random", seed=0), DEVICE) < 1e-5
    cfg = quick_sweep(micro_store, tmp_path / "run", size=4, seeds=(0,), epochs=1, val_size=2, encoder="random")
    sweep = train_decoder(cfg, ctx=CPU)
    assert len(sweep.results) == 1


def test_a_float16_store_passes_within_its_rounding(synth_root, tmp_path, store_suffix):
    path = tmp_path / f"half{store_suffix}"
    extract(extract_config(synth_root, path, views="identity", dtype="float16"), ctx=CPU)
    with FeatureStore.open(path) as store:
        difference = check_encoder_matches(store, build_encoder("vit_micro", "random", seed=0), DEVICE)
        assert 0 < difference < STORAGE_TOLERANCE["float16"]
        with pytest.raises(FeatcacheError, match="relative L2"):
            check_encoder_matches(store, build_encoder("vit_micro", "random", seed=1), DEVICE)


def test_a_run_s_encoder_is_checked_against_its_store_when_the_store_is_there(micro_store, tmp_path, capsys):
    assert check_run_encoder(str(micro_store), build_encoder("vit_micro", "random", seed=0), DEVICE) < 1e-5
    forge(micro_store, tmp_path / "forged.zarr")
    with pytest.raises(FeatcacheError, match="relative L2"):
        check_run_encoder(str(tmp_path / "forged.zarr"), build_encoder("vit_micro", "random", seed=1), DEVICE)
    assert check_run_encoder(str(tmp_path / "moved.zarr"), build_encoder("vit_micro", "random", seed=0), DEVICE) is None
    assert "moved.zarr is not there" in capsys.readouterr().err
    # A store overwritten since by an extraction with another encoder says nothing about the run's encoder.
    forge(micro_store, tmp_path / "replaced.zarr", seed=2)
    assert (
        check_run_encoder(str(tmp_path / "replaced.zarr"), build_encoder("vit_micro", "random", seed=0), DEVICE) is None
    )
    assert "replaced.zarr now holds the features of vit_micro (random: random seed 2" in capsys.readouterr().err


def test_predict_refuses_a_run_whose_store_claims_another_encoder(micro_store, synth_root, tmp_path):
    """predict rebuilds the encoder the run's store claims; re-encoding a stored sample exposes the false claim."""
    store = tmp_path / "forged.zarr"
    claimed = forge(micro_store, store)
    run = tmp_path / "run"
    train_decoder(quick_sweep(store, run, size=4, seeds=(0,), epochs=1, val_size=2), ctx=CPU)
    image = next((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))
    with pytest.raises(FeatcacheError) as raised:
        predict(PredictConfig(run_dir=run, images=[image], out=tmp_path / "pred"), ctx=CPU)
    refusal_names(str(raised.value), store, claimed)
    assert not list((tmp_path / "pred").glob("*.png"))
    genuine = tmp_path / "genuine"
    train_decoder(quick_sweep(micro_store, genuine, size=4, seeds=(0,), epochs=1, val_size=2), ctx=CPU)
    assert (
        len(predict(PredictConfig(run_dir=genuine, images=[image], out=tmp_path / "ok", overlays="none"), ctx=CPU)) == 1
    )
