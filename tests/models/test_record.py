"""featcache.models.record: an encoder's record is JSON and names its weights."""

import torch
from torchvision.models.vision_transformer import VisionTransformer

from featcache.models.record import record_of
from featcache.models.spec import build_encoder
from featcache.models.vit import ARCHITECTURES


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_twin(arch: str) -> VisionTransformer:
    c = ARCHITECTURES[arch]
    return VisionTransformer(c.image_size, c.patch_size, c.num_layers, c.num_heads, c.hidden_dim, c.mlp_dim).eval()


def test_provenance_is_json_and_names_the_weights():
    import json

    prov = record_of(build_encoder("vit_micro", seed=3)).to_json()
    assert json.loads(json.dumps(prov))["source"] == {"kind": "random", "seed": 3}
    assert prov["arch"] == "vit_micro" and prov["config"]["hidden_dim"] == 32
