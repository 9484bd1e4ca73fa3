"""featcache.models.decoders: the study's decoders and the linear probe map a grid to pixels."""

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from featcache.core.errors import FeatcacheError
from featcache.models.decoders import ReconstructionDecoder, build_decoder
from featcache.models.vit import ARCHITECTURES


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_twin(arch: str) -> VisionTransformer:
    c = ARCHITECTURES[arch]
    return VisionTransformer(c.image_size, c.patch_size, c.num_layers, c.num_heads, c.hidden_dim, c.mlp_dim).eval()


def test_decoders_map_grid_to_pixels():
    feats = torch.rand(2, 32, 3, 4)
    assert build_decoder("sd", 32)(feats).shape == (2, 1, 48, 64)
    assert build_decoder("linear", 32)(feats).shape == (2, 1, 48, 64)
    assert ReconstructionDecoder(32)(feats).shape == (2, 3, 48, 64)
    with pytest.raises(FeatcacheError, match="sd, linear"):
        build_decoder("unet", 32)


@pytest.mark.parametrize("name", ["sd", "linear"])
@pytest.mark.parametrize("patch", [14, 16, 8])
def test_decoders_answer_at_the_image_size_for_any_patch(name, patch):
    for groups in (1, 3):
        decoder = build_decoder(name, 8, groups, patch_size=patch)
        logits = decoder(torch.rand(2, 8 * groups, 4, 5))
        assert logits.shape == (2, groups, 4 * patch, 5 * patch)
