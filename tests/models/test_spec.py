"""featcache.models.spec: an encoder argument parsed once, and recorded encoders rebuilt and proven by their hash.

Offline: the micro ViT and a tiny timm ViT, both with random weights.
"""

import os
import shutil

import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models import TimmEncoder, WeightsSource, record_of, weights_sha256
from featcache.models.spec import EncoderSpec, build_encoder

pytest.importorskip("timm")

TIMM = "timm:vit_tiny_patch16_224"
#: 2 blocks of width 32 at 32 px: built in milliseconds, no download.
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2, "img_size": 32}


def test_parse_takes_the_torchvision_words():
    assert EncoderSpec.parse("imagenet", arch="vit_micro", layers=[1, 2], seed=3) == EncoderSpec(
        "vit_micro", "imagenet", 3, (1, 2), {}
    )
    spec = EncoderSpec.parse("runs/enc.pt")
    assert (spec.arch, spec.weights, spec.layers, spec.model_kwargs) == ("vit_b_16", "runs/enc.pt", None, {})
    assert spec.expect_sha256 is None


def test_parse_of_a_timm_name_defaults_to_its_pretrained_weights():
    kwargs = {"depth": 2}
    spec = EncoderSpec.parse(TIMM, arch="vit_micro", model_kwargs=kwargs, layers=(-1,))
    assert (spec.arch, spec.weights, spec.model_kwargs, spec.layers) == (TIMM, "pretrained", {"depth": 2}, (-1,))
    kwargs["depth"] = 5
    assert spec.model_kwargs == {"depth": 2}  # a copy: the caller's dict does not change the spec
    assert EncoderSpec.parse(TIMM, weights="random").weights == "random"


@pytest.mark.parametrize(
    ("options", "option"),
    [({"weights": "random"}, "--encoder-weights"), ({"model_kwargs": {"depth": 2}}, "--model-kwargs")],
)
def test_timm_options_with_a_torchvision_encoder_are_a_usage_error(options, option):
    with pytest.raises(OptionError, match=rf"^{option} goes with --encoder timm:NAME; a torchvision encoder takes"):
        EncoderSpec.parse("imagenet", **options)


def test_like_keeps_a_timm_models_options_and_the_recorded_layers():
    record = record_of(build_encoder(TIMM, "random", seed=4, model_kwargs=TINY, layers=(1, 2)))
    spec = EncoderSpec.like(record, "random")
    assert (spec.arch, spec.weights, spec.seed, spec.layers, spec.model_kwargs) == (TIMM, "random", 4, (1, 2), TINY)
    assert spec.expect_sha256 is None
    rebuilt = spec.build()
    assert isinstance(rebuilt, TimmEncoder) and rebuilt.layers == (1, 2)
    assert weights_sha256(rebuilt) == record.weights_sha256
    assert EncoderSpec.like(record, "other.pt", layers=[2]).layers == (2,)
    assert EncoderSpec.like(record, "other.pt").weights == "other.pt"


def test_like_of_a_torchvision_record_reads_its_last_block():
    record = record_of(build_encoder("vit_micro", "random"))
    spec = EncoderSpec.like(record, "imagenet")
    assert (spec.arch, spec.weights, spec.layers, spec.model_kwargs) == ("vit_micro", "imagenet", (2,), {})


@pytest.mark.parametrize(("arch", "kwargs"), [("vit_micro", None), (TIMM, TINY)])
def test_a_recorded_random_encoder_is_rebuilt_and_proven_by_its_hash(arch, kwargs):
    record = record_of(build_encoder(arch, "random", seed=3, layers=[1, 2], model_kwargs=kwargs))
    spec = EncoderSpec.recorded(record)
    assert (spec.weights, spec.seed, spec.layers) == ("random", 3, (1, 2))
    assert spec.expect_sha256 == record.weights_sha256 and spec.recorded_as == "random"
    assert record_of(spec.build()).to_json() == record.to_json()
    # The record says seed 4, the hash is seed 3's: the rebuilt encoder is refused.
    other = weights_sha256(build_encoder(arch, "random", seed=4, model_kwargs=kwargs))
    record.source = WeightsSource("random", seed=4)
    with pytest.raises(FeatcacheError) as info:
        EncoderSpec.recorded(record).build()
    assert str(info.value) == (
        f"the {arch} encoder rebuilt from random has other weights ({other[:10]}…) than the one recorded "
        f"({record.weights_sha256[:10]}…, from random): this library version makes them differently; pass the "
        "weights file the store was extracted with with --encoder (checked by its hash)"
    )


def test_a_recorded_weights_file_that_moved(tmp_path):
    original = tmp_path / "enc.pt"
    torch.save(build_encoder("vit_micro", "random", seed=5).state_dict(), original)
    record = record_of(build_encoder("vit_micro", original))
    assert record.source.kind == "file" and record.source.file == str(original.resolve())
    assert weights_sha256(EncoderSpec.recorded(record).build()) == record.weights_sha256
    moved = tmp_path / "elsewhere" / "enc.pt"
    os.renames(original, moved)
    with pytest.raises(FeatcacheError) as info:
        EncoderSpec.recorded(record)
    assert str(info.value) == (
        f"the encoder weights {original.resolve()} that the features were extracted with are not there; pass "
        "--encoder with the file's new path (it is checked against the recorded hash)"
    )
    rebuilt = EncoderSpec.recorded(record, weights_file=moved).build()
    assert weights_sha256(rebuilt) == record.weights_sha256 and rebuilt.source.file == str(moved.resolve())
    wrong = tmp_path / "wrong.pt"
    torch.save(build_encoder("vit_micro", "random", seed=6).state_dict(), wrong)
    with pytest.raises(FeatcacheError) as info:
        EncoderSpec.recorded(record, weights_file=wrong).build()
    assert str(info.value).startswith(f"--encoder {wrong} holds other weights (") and "\n" not in str(info.value)
    assert str(info.value).endswith(
        f"from {original.resolve()}); pass the weights file the store was extracted with (recorded as "
        f"{original.resolve()}, no longer there; checked by its hash)"
    )
    # The file moved back, then replaced by another: named, with the way back.
    shutil.copyfile(wrong, original)
    with pytest.raises(FeatcacheError) as info:
        EncoderSpec.recorded(record).build()
    assert str(info.value).startswith(f"the weights file {original.resolve()} has other weights (")
    assert "it was replaced since the extraction; put the weights file the store was extracted with back" in str(
        info.value
    )
    with pytest.raises(FeatcacheError, match=rf"^--encoder {wrong} holds .*; drop --encoder to rebuild it from "):
        EncoderSpec.recorded(record, weights_file=wrong).build()


def test_build_encoder_is_the_spec_built():
    encoder = build_encoder("vit_micro", "random", 2, layers=[-1, 1])
    spec = EncoderSpec("vit_micro", "random", 2, (1, 2)).build()
    assert weights_sha256(encoder) == weights_sha256(spec) != weights_sha256(build_encoder("vit_micro", "random", 3))
    assert encoder.layers == spec.layers == (1, 2) and not encoder.training
    assert encoder.source == WeightsSource("random", seed=2)
    timm = build_encoder(TIMM, "random", model_kwargs=TINY)
    assert isinstance(timm, TimmEncoder) and timm.model_kwargs == TINY and timm.source == WeightsSource("random", 0)


def test_weights_of_the_other_library_or_no_file_are_refused(tmp_path):
    with pytest.raises(FeatcacheError, match="^pretrained names a timm model's own weights; the torchvision vit_micro"):
        build_encoder("vit_micro", "pretrained")
    with pytest.raises(FeatcacheError, match=r"^imagenet names torchvision's weights; timm:vit_tiny_patch16_224 takes"):
        build_encoder(TIMM, "imagenet", model_kwargs=TINY)
    with pytest.raises(FeatcacheError, match=rf"^encoder weights {tmp_path / 'none.pt'} not found; pass imagenet,"):
        build_encoder("vit_micro", tmp_path / "none.pt")
