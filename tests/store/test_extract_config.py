"""featcache.store.extract_config: what `featcache extract` takes, its usage errors and its writer threads."""

from pathlib import Path

import pytest

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models.spec import EncoderSpec
from featcache.store import extract_config as module
from featcache.store.extract_config import ExtractConfig


def config(**overrides) -> ExtractConfig:
    return ExtractConfig(data=Path("data"), out=overrides.pop("out", "s.zarr"), **overrides)


def test_the_defaults_are_valid():
    cfg = config()
    cfg.validate()
    assert (cfg.encoder, cfg.arch, cfg.image_size, cfg.views, cfg.dtype, cfg.shard_size) == (
        "imagenet",
        "vit_b_16",
        224,
        "identity",
        "float16",
        32,
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"views": "rotations"}, "--views rotations is not one of identity, flips"),
        ({"dtype": "int8"}, "--dtype int8 is not one of float16, float32, bfloat16"),
        ({"image_size": 0}, "--image-size 0 must be positive (a multiple of the patch size)"),
        ({"batch_size": 0}, "--batch-size 0 must be at least 1"),
        ({"shard_size": 0}, "--shard-size 0 must be at least 1"),
        ({"workers": -1}, "--workers -1 must be 0 or more"),
        ({"writers": 0}, "writers 0 must be at least 1"),
        ({"writers": 2, "out": "s.h5"}, "s.h5: an HDF5 store is written by one thread; use a .zarr store for more"),
        ({"encoder_weights": "w.safetensors"}, "--encoder-weights goes with --encoder timm:NAME"),
    ],
)
def test_values_that_can_never_be_valid_are_usage_errors(overrides, message):
    with pytest.raises(OptionError) as err:
        config(**overrides).validate()
    assert str(err.value).startswith(message)


def test_a_path_of_no_store_kind_is_refused_naming_the_suffixes():
    with pytest.raises(FeatcacheError, match=r"^s\.npz: a store path ends in \.zarr \(Zarr v3\) or \.h5 \(HDF5\)$"):
        config(out="s.npz").validate()


def test_the_encoder_options_become_one_spec():
    cfg = config(encoder="random", arch="vit_micro", layers=[1, 2], seed=3)
    assert cfg.encoder_spec() == EncoderSpec(arch="vit_micro", weights="random", seed=3, layers=(1, 2))
    timm = config(encoder="timm:vit_tiny", encoder_weights="random", model_kwargs={"img_size": 64})
    assert timm.encoder_spec() == EncoderSpec("timm:vit_tiny", "random", 0, None, {"img_size": 64})


def test_one_writer_for_hdf5_and_up_to_four_for_zarr_unless_given(monkeypatch):
    monkeypatch.setattr(module.os, "cpu_count", lambda: 16)
    assert config(out="s.h5").writer_threads() == 1 and config().writer_threads() == 4
    monkeypatch.setattr(module.os, "cpu_count", lambda: 2)
    assert config(out="memory://bucket/s.zarr").writer_threads() == 2
    monkeypatch.setattr(module.os, "cpu_count", lambda: None)
    assert config().writer_threads() == 1
    assert config(writers=3).writer_threads() == 3 and config(out="s.h5", writers=1).writer_threads() == 1
