"""featcache.models.weights: torchvision state-dict files, ImageNet weights from the cache, pickles refused."""

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from featcache.core.errors import FeatcacheError
from featcache.models.spec import build_encoder
from featcache.models.vit import ARCHITECTURES
from featcache.models.weights import IMAGENET_URLS, imagenet_weights_path


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_twin(arch: str) -> VisionTransformer:
    c = ARCHITECTURES[arch]
    return VisionTransformer(c.image_size, c.patch_size, c.num_layers, c.num_heads, c.hidden_dim, c.mlp_dim).eval()


def test_torchvision_state_dict_file_loads_without_head_only(tmp_path):
    tv = torchvision_twin("vit_micro")
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    encoder = build_encoder("vit_micro", weights=path)
    assert encoder.source.kind == "file" and len(encoder.source.sha256) == 64
    torch.testing.assert_close(encoder.encoder.pos_embedding, tv.encoder.pos_embedding)
    left_out = set(tv.state_dict()) - set(encoder.state_dict())
    assert left_out == {"heads.head.weight", "heads.head.bias"}


def test_state_dict_missing_keys_or_other_arch_refused(tmp_path):
    state = torchvision_twin("vit_micro").state_dict()
    del state["encoder.ln.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(FeatcacheError, match="1 keys missing"):
        build_encoder("vit_micro", weights=tmp_path / "broken.pth")
    torch.save(torchvision_twin("vit_micro").state_dict(), tmp_path / "micro.pth")
    with pytest.raises(FeatcacheError, match="another architecture"):
        build_encoder("vit_mini", weights=tmp_path / "micro.pth")


def test_imagenet_weights_from_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setitem(IMAGENET_URLS, "vit_micro", "https://example.invalid/vit_micro-0000.pth")
    tv = torchvision_twin("vit_micro")
    path = imagenet_weights_path("vit_micro")
    assert path == tmp_path / "hub" / "checkpoints" / "vit_micro-0000.pth"
    path.parent.mkdir(parents=True)
    torch.save(tv.state_dict(), path)
    encoder = build_encoder("vit_micro", weights="imagenet")
    torch.testing.assert_close(encoder.conv_proj.weight, tv.conv_proj.weight)
    assert encoder.source.to_json() == {"kind": "imagenet", "file": "vit_micro-0000.pth"}


def test_imagenet_weights_unreachable_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, progress=True):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(FeatcacheError) as err:
        build_encoder("vit_b_16", weights="imagenet")
    message = str(err.value)
    assert IMAGENET_URLS["vit_b_16"] in message and str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(FeatcacheError, match="no ImageNet weights"):
        build_encoder("vit_micro", weights="imagenet")


def test_malicious_pickle_is_refused_without_running(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(FeatcacheError, match="refused to load"):
        build_encoder("vit_micro", weights=tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
