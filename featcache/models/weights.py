"""Encoder weights: hashes of modules and files, torchvision's ImageNet weights (cache or download), and the
loading of a torchvision-format state dict with exactly the classification head left out."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from featcache.core.errors import FeatcacheError
from featcache.core.io import safe_torch_load
from featcache.models.vit import Encoder

#: The file torchvision's ``ViT_B_16_Weights.IMAGENET1K_V1`` downloads (the name carries a hash).
IMAGENET_URLS: dict[str, str] = {
    "vit_b_16": "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
}


def weights_sha256(module: nn.Module) -> str:
    """A hash of a module's state dict (names, dtypes, shapes and values), independent of files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of ``arch`` ($TORCH_HOME/hub/checkpoints)."""
    if arch not in IMAGENET_URLS:
        raise FeatcacheError(
            f"no ImageNet weights are known for {arch!r} (only {', '.join(IMAGENET_URLS)}); start from random "
            "weights or a weights file instead"
        )
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[arch].rsplit("/", 1)[-1]


def _download_imagenet(arch: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(IMAGENET_URLS[arch], str(target), progress=True)


def imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    path = imagenet_weights_path(arch)
    if not path.exists():
        try:
            _download_imagenet(arch, path)
        except Exception as exc:  # no network, proxy refusal, DNS failure: all end the same way
            raise FeatcacheError(
                f"ImageNet weights for {arch} are not in torchvision's cache and could not be downloaded "
                f"({type(exc).__name__}); put {IMAGENET_URLS[arch]} at {path} (or set TORCH_HOME)"
            ) from exc
    return safe_torch_load(path)


def _shape_of(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(hidden width, number of blocks) of a torchvision ViT state dict, or None if it is not one."""
    if "conv_proj.weight" not in state:
        return None
    blocks = {k.split(".")[2] for k in state if k.startswith("encoder.layers.")}
    return state["conv_proj.weight"].shape[0], len(blocks)


def load_encoder_weights(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-format ViT state dict, asserting that exactly the head was left out."""
    body = {k: v for k, v in state.items() if not k.startswith("heads.")}  # the classifier is not used
    theirs, ours = _shape_of(body), (encoder.width, encoder.config.num_layers)
    if theirs is not None and theirs != ours:
        raise FeatcacheError(
            f"{source} holds another architecture (width {theirs[0]}, {theirs[1]} blocks) than {encoder.arch} "
            f"(width {ours[0]}, {ours[1]} blocks); pass the matching --arch"
        )
    expected = set(encoder.state_dict())
    missing, unexpected = expected - set(body), set(body) - expected
    if missing or unexpected:
        raise FeatcacheError(
            f"{source} is not a {encoder.arch} state dict: {len(missing)} keys missing "
            f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})"
        )
    own = encoder.state_dict()
    for key, value in body.items():
        if value.shape != own[key].shape:
            raise FeatcacheError(
                f"{source} does not fit {encoder.arch}: {key} is {tuple(value.shape)}, expected {tuple(own[key].shape)}"
            )
    encoder.load_state_dict(body, strict=True)
