"""featcache.models.vit: the torchvision ViT encoder against torchvision's own, its sizes and seeding."""

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer, vit_b_16

from featcache.cli.parsing import parse_layers
from featcache.core.errors import OptionError
from featcache.models.decoders import LinearProbe, ReconstructionDecoder, SegmentationDecoder
from featcache.models.spec import build_encoder
from featcache.models.vit import ARCHITECTURES, Encoder, resolve_layers
from featcache.models.weights import load_encoder_weights, weights_sha256


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_study_parameter_counts():
    encoder = Encoder("vit_b_16", ARCHITECTURES["vit_b_16"])
    assert n_params(encoder) == 85_798_656
    assert n_params(vit_b_16()) - n_params(encoder) == 769_000  # exactly torchvision's head
    assert n_params(ReconstructionDecoder(768)) == 5_089_923
    assert n_params(SegmentationDecoder(768)) == 2_158_017
    assert n_params(LinearProbe(768)) == 769


def torchvision_twin(arch: str) -> VisionTransformer:
    c = ARCHITECTURES[arch]
    return VisionTransformer(c.image_size, c.patch_size, c.num_layers, c.num_heads, c.hidden_dim, c.mlp_dim).eval()


@pytest.mark.parametrize("arch", ["vit_micro", "vit_ti_16"])
def test_encoder_equals_torchvision_forward(arch):
    tv = torchvision_twin(arch)
    encoder = build_encoder(arch)
    load_encoder_weights(encoder, tv.state_dict(), "twin")
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        feats = encoder(images)
        cls = encoder.forward_tokens(images)[0][:, 0]
        normalised = (images - encoder.mean) / encoder.std
        tokens = tv._process_input(normalised)
        tokens = tv.encoder(torch.cat([tv.class_token.expand(2, -1, -1), tokens], dim=1))
        logits = tv(normalised)
    width = ARCHITECTURES[arch].hidden_dim
    assert feats.shape == (2, width, 14, 14)
    torch.testing.assert_close(feats, tokens[:, 1:].transpose(1, 2).reshape(2, width, 14, 14))
    torch.testing.assert_close(tv.heads(cls), logits)


def test_other_image_sizes_interpolate_positions():
    encoder = build_encoder("vit_micro")
    assert encoder(torch.rand(1, 3, 64, 48)).shape == (1, 32, 4, 3)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        encoder(torch.rand(1, 3, 50, 48))


def test_random_weights_are_seeded():
    a, b, c = build_encoder("vit_micro", seed=1), build_encoder("vit_micro", seed=1), build_encoder("vit_micro", seed=2)
    assert weights_sha256(a) == weights_sha256(b) != weights_sha256(c)
    assert a.source.to_json() == {"kind": "random", "seed": 1}


def test_layer_numbers_are_resolved_and_checked():
    assert resolve_layers(None, 12, "m") == (12,)
    assert resolve_layers((-4, -3, -2, -1), 12, "m") == (9, 10, 11, 12)
    assert resolve_layers((12, 3, -1), 12, "m") == (3, 12)
    assert parse_layers("3,6,9,12") == (3, 6, 9, 12)
    with pytest.raises(OptionError, match="has 12 blocks"):
        resolve_layers((13,), 12, "m")
    with pytest.raises(OptionError, match="block numbers"):
        parse_layers("0")
    with pytest.raises(OptionError, match="block numbers"):
        parse_layers("last")
