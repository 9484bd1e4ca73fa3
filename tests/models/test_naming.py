"""featcache.models.naming: an encoder is named by what it is, not by the study's words."""

import pytest

from featcache.models import EncoderRecord, WeightsSource, build_encoder, record_of
from featcache.models.naming import arch_name, encoder_words, weights_words


def record(arch: str, source: WeightsSource, sha: str = "1a2b3c4d" + "0" * 56) -> EncoderRecord:
    return EncoderRecord(arch=arch, config={}, normalisation={}, source=source, weights_sha256=sha)


@pytest.mark.parametrize(
    ("arch", "name"),
    [
        ("vit_b_16", "ViT-B/16"),
        ("vit_ti_16", "ViT-Ti/16"),
        ("vit_s_16", "ViT-S/16"),
        ("vit_mini", "ViT-mini"),
        ("timm:vit_small_patch14_dinov2", "timm vit_small_patch14_dinov2"),
    ],
)
def test_architecture_names(arch, name):
    assert arch_name(arch) == name


def test_every_kind_of_weights_in_words():
    assert encoder_words(record("vit_ti_16", WeightsSource("random", seed=0))) == "random ViT-Ti/16"
    assert encoder_words(record("vit_b_16", WeightsSource("imagenet", file="vit_b_16-c867db91.pth"))) == (
        "ImageNet ViT-B/16"
    )
    timm_random = record("timm:vit_small_patch14_dinov2", WeightsSource("random", seed=0))
    assert encoder_words(timm_random) == "timm vit_small_patch14_dinov2 (random weights)"
    assert encoder_words(record("timm:vit_base_patch14_dinov2.lvd142m", WeightsSource("timm"))) == (
        "timm vit_base_patch14_dinov2.lvd142m (pretrained)"
    )
    from_file = WeightsSource("file", file="/models/enc.pt", sha256="1a2b3c4d" + "f" * 56)
    assert encoder_words(record("vit_b_16", from_file)) == "ViT-B/16 from file enc.pt sha256 1a2b3c4d"
    pretrained = WeightsSource("featcache", file="/x/ssl.pt", sha256="99aa" * 16, init=WeightsSource("imagenet"))
    words = encoder_words(record("vit_b_16", pretrained))
    assert words == "ViT-B/16 denoising-pretrained from ImageNet (file ssl.pt sha256 99aa99aa)"
    assert weights_words(record("vit_b_16", pretrained)) == "weights sha256 1a2b3c4d"


def test_a_built_encoder_is_named_from_its_record():
    assert encoder_words(record_of(build_encoder("vit_micro", seed=3))) == "random ViT-micro"
