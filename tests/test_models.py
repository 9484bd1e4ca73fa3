import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer, vit_b_16

from featcache.errors import FeatcacheError
from featcache.models import (
    ARCHITECTURES,
    IMAGENET_URLS,
    Encoder,
    LinearProbe,
    ReconstructionDecoder,
    SegmentationDecoder,
    build_decoder,
    build_encoder,
    encoder_provenance,
    imagenet_weights_path,
    load_encoder_weights,
    weights_sha256,
)


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
    assert a.source == {"kind": "random", "seed": 1}


def test_torchvision_state_dict_file_loads_without_head_only(tmp_path):
    tv = torchvision_twin("vit_micro")
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    encoder = build_encoder("vit_micro", weights=path)
    assert encoder.source["kind"] == "file" and len(encoder.source["sha256"]) == 64
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
    assert encoder.source == {"kind": "imagenet", "file": "vit_micro-0000.pth"}


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


def test_decoders_map_grid_to_pixels():
    feats = torch.rand(2, 32, 3, 4)
    assert build_decoder("sd", 32)(feats).shape == (2, 1, 48, 64)
    assert build_decoder("linear", 32)(feats).shape == (2, 1, 48, 64)
    assert ReconstructionDecoder(32)(feats).shape == (2, 3, 48, 64)
    with pytest.raises(FeatcacheError, match="sd, linear"):
        build_decoder("unet", 32)


def test_provenance_is_json_and_names_the_weights():
    import json

    prov = encoder_provenance(build_encoder("vit_micro", seed=3))
    assert json.loads(json.dumps(prov))["source"] == {"kind": "random", "seed": 3}
    assert prov["arch"] == "vit_micro" and prov["config"]["hidden_dim"] == 32
