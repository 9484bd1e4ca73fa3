"""Encoders (torchvision ViTs with the study's defects removed) and the decoders trained on them.

Shapes: images are float ``[B, 3, H, W]`` in [0, 1]; an encoder returns patch features
``[B, C, H/p, W/p]`` (p = patch size, 16 for every named architecture); the segmentation
decoders return logits ``[B, 1, H, W]`` for features of a ``H/16 x W/16`` grid.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from featcache.errors import FeatcacheError, OptionError
from featcache.io import safe_torch_load

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The file torchvision's ``ViT_B_16_Weights.IMAGENET1K_V1`` downloads (the name carries a hash).
IMAGENET_URLS: dict[str, str] = {
    "vit_b_16": "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
}

#: A featcache encoder checkpoint is a dict with this value under ``"format"``.
ENCODER_CHECKPOINT_FORMAT = "featcache-encoder/1"


@dataclass(frozen=True)
class EncoderConfig:
    """A ViT architecture as torchvision's ``VisionTransformer`` takes it."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    image_size: int = 224


ARCHITECTURES: dict[str, EncoderConfig] = {
    "vit_b_16": EncoderConfig(16, 12, 12, 768, 3072),
    "vit_s_16": EncoderConfig(16, 12, 6, 384, 1536),
    "vit_ti_16": EncoderConfig(16, 12, 3, 192, 768),
    "vit_mini": EncoderConfig(16, 4, 4, 128, 256),
    "vit_micro": EncoderConfig(16, 2, 2, 32, 64),
}


def architecture(name: str) -> EncoderConfig:
    """The config of a named architecture, or an error listing the names."""
    if name not in ARCHITECTURES:
        raise OptionError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


class Encoder(nn.Module):
    """A frozen-or-trainable ViT that maps images to a grid of patch features.

    Built from torchvision's ``VisionTransformer`` and keeping its parameter names
    (``conv_proj``, ``class_token``, ``encoder.*``), so a torchvision state dict loads directly
    (minus the classification head). Unlike the study's code it normalises with ImageNet
    mean/std, adds the positional embedding once and applies the final LayerNorm once.
    Other image sizes work: the positional embedding is interpolated (bicubic) to the grid.
    """

    def __init__(self, arch: str, config: EncoderConfig) -> None:
        super().__init__()
        vit = VisionTransformer(
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            mlp_dim=config.mlp_dim,
        )
        self.arch = arch
        self.config = config
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder
        # Not persistent: the state dict stays exactly torchvision's key set without the head.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        """Channels C of the patch features."""
        return self.config.hidden_dim

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _pos_embedding(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding ``[1, 1 + h*w, C]`` for an ``h x w`` patch grid."""
        pos = self.encoder.pos_embedding
        grid = self.config.image_size // self.config.patch_size
        if (h, w) == (grid, grid):
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Final-LayerNorm tokens ``[B, 1 + h*w, C]`` (CLS first) and the grid ``h, w``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        p = self.config.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x = (images - self.mean) / self.std
        x = self.conv_proj(x)  # [B, C, h, w]
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(b, -1, -1), x], dim=1)
        x = x + self._pos_embedding(h, w)
        x = self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))
        return x, h, w

    def forward(self, images: torch.Tensor, return_cls: bool = False):
        """Patch features ``[B, C, H/p, W/p]``; with ``return_cls`` also the CLS token ``[B, C]``."""
        tokens, h, w = self.forward_tokens(images)
        feats = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        if return_cls:
            return feats, tokens[:, 0]
        return feats


class ReconstructionDecoder(nn.Module):
    """The study's RD: four [Conv3x3, ReLU, Upsample x2 nearest] 768->512->256->128->64, Conv3x3 -> 3, Sigmoid.

    ``[B, C, h, w]`` features -> ``[B, 3, 16h, 16w]`` image in [0, 1]. 5,089,923 parameters at C = 768.
    """

    def __init__(self, in_channels: int = 768) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in zip((in_channels, 512, 256, 128), (512, 256, 128, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.Upsample(scale_factor=2, mode="nearest")]
        layers += [nn.Conv2d(64, 3, 3, padding=1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class SegmentationDecoder(nn.Module):
    """The study's SD: four [Conv3x3, BatchNorm, ReLU, Upsample x2 bilinear] C->256->128->64->32, Conv1x1 -> 1.

    ``[B, C, h, w]`` features -> logits ``[B, 1, 16h, 16w]``. 2,158,017 parameters at C = 768.
    With ``groups = K`` it is K independent decoders in one network (grouped convolutions, per-group
    BatchNorm channels): ``[B, K*C, h, w]`` -> ``[B, K, 16h, 16w]``, group k reading channels
    ``k*C:(k+1)*C``; see `group_state` / `stack_states`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        g = groups
        for cin, cout in zip((in_channels, 256, 128, 64), (256, 128, 64, 32)):
            layers += [
                nn.Conv2d(cin * g, cout * g, 3, padding=1, groups=g),
                nn.BatchNorm2d(cout * g),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
        layers.append(nn.Conv2d(32 * g, g, 1, groups=g))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class LinearProbe(nn.Module):
    """A per-patch linear classifier: Conv1x1(C -> 1), logits upsampled x16 bilinearly.

    ``[B, C, h, w]`` features -> logits ``[B, 1, 16h, 16w]``; C + 1 parameters. ``groups``: as
    `SegmentationDecoder`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1, scale: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels * groups, groups, 1, groups=groups)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(features), scale_factor=self.scale, mode="bilinear", align_corners=False)


DECODERS: dict[str, type[nn.Module]] = {"sd": SegmentationDecoder, "linear": LinearProbe}


def build_decoder(name: str, in_channels: int, groups: int = 1) -> nn.Module:
    """A segmentation decoder by name (``sd`` or ``linear``) for features of ``in_channels``; ``groups`` of them in one."""
    if name not in DECODERS:
        raise OptionError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name](in_channels, groups)


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K single decoders' state dicts -> the state dict of their grouped decoder (``groups=K``).

    Every parameter and BatchNorm buffer of a grouped layer is its groups' tensors concatenated
    along dim 0 (output channels); the scalar batch counters are shared.
    """
    return {k: v if v.ndim == 0 else torch.cat([s[k] for s in states]) for k, v in states[0].items()}


def group_state(state: dict[str, torch.Tensor], k: int, groups: int) -> dict[str, torch.Tensor]:
    """Group ``k``'s slice of a grouped decoder's state dict: a plain (``groups=1``) decoder's state, on the CPU.

    On the CPU so that slices taken at different times (some loaded from a resume state) stack together.
    """
    return {name: (v if v.ndim == 0 else v.chunk(groups)[k]).detach().to("cpu", copy=True) for name, v in state.items()}


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
            f"no ImageNet weights are known for {arch!r} (only {', '.join(IMAGENET_URLS)}); start from random weights or a weights file instead"
        )
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[arch].rsplit("/", 1)[-1]


def _download_imagenet(arch: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(IMAGENET_URLS[arch], str(target), progress=True)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
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


def build_encoder(arch: str = "vit_b_16", weights: str | Path = "random", seed: int = 0) -> Encoder:
    """An encoder of a named architecture with its starting weights.

    ``weights``: ``"random"`` (torchvision's initialisation under ``seed``), ``"imagenet"``
    (torchvision's IMAGENET1K_V1 file, from its cache or downloaded where reachable), a
    torchvision state-dict file, or a featcache encoder checkpoint (whose architecture wins over
    ``arch``). The returned encoder records ``source`` (a JSON-able dict of where its weights came
    from) and is in eval mode.
    """
    weights_str = str(weights)
    path = None if weights_str in ("random", "imagenet") else Path(weights_str)
    ckpt = None
    if path is not None:
        if not path.is_file():
            raise FeatcacheError(f"encoder weights {path} not found; pass imagenet, random or an existing file")
        loaded = safe_torch_load(path)
        if isinstance(loaded, dict) and loaded.get("format") == ENCODER_CHECKPOINT_FORMAT:
            ckpt = loaded
            arch = ckpt["arch"]
    config = EncoderConfig(**ckpt["config"]) if ckpt else architecture(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(arch, config)
    if weights_str == "random":
        source: dict = {"kind": "random", "seed": seed}
    elif weights_str == "imagenet":
        load_encoder_weights(encoder, _imagenet_state_dict(arch), f"ImageNet weights for {arch}")
        source = {"kind": "imagenet", "file": imagenet_weights_path(arch).name}
    elif ckpt is not None:
        load_encoder_weights(encoder, ckpt["state_dict"], str(path))
        source = {"kind": "featcache", "file": str(path.resolve()), "sha256": file_sha256(path), "init": ckpt.get("init")}
    else:
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise FeatcacheError(f"{path} is neither a torchvision state dict nor a featcache encoder checkpoint")
        load_encoder_weights(encoder, loaded, str(path))
        source = {"kind": "file", "file": str(path.resolve()), "sha256": file_sha256(path)}
    encoder.source = source
    return encoder.eval()


def encoder_provenance(encoder: Encoder) -> dict:
    """JSON-able identity of an encoder: architecture, config, where its weights came from, their hash."""
    return {
        "arch": encoder.arch,
        "config": asdict(encoder.config),
        "source": getattr(encoder, "source", {"kind": "unknown"}),
        "weights_sha256": weights_sha256(encoder),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def encoder_from_provenance(arch: str, source: dict, sha256: str, weights: str | Path | None = None) -> Encoder:
    """Rebuild an encoder from a recorded ``source`` and prove it is the same one by its weights' hash.

    ``weights``: where the recorded weights file is now, if it moved (checked by the hash all the same).
    """
    kind = source.get("kind")
    if weights is not None:
        encoder = build_encoder(arch, weights, seed=source.get("seed", 0))
    elif kind == "random":
        encoder = build_encoder(arch, "random", seed=source["seed"])
    elif kind == "imagenet":
        encoder = build_encoder(arch, "imagenet")
    elif kind in ("file", "featcache"):
        if not Path(source["file"]).is_file():
            raise FeatcacheError(
                f"the encoder weights {source['file']} that the features were extracted with are not there; "
                "pass --encoder with the file's new path (it is checked against the recorded hash)"
            )
        encoder = build_encoder(arch, source["file"])
    else:
        raise FeatcacheError(f"cannot rebuild an encoder of unknown origin {source}")
    if weights_sha256(encoder) != sha256:
        where = source.get("file", kind)
        raise FeatcacheError(
            f"the {arch} encoder rebuilt from {where} has other weights ({weights_sha256(encoder)[:10]}…) than "
            f"the one recorded ({sha256[:10]}…); restore that weights file"
        )
    return encoder
