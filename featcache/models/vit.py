"""The torchvision ViT encoders (the study's defects removed): architectures, block selection and the encoder.

Shapes: images are float ``[B, 3, H, W]`` in [0, 1]; an encoder returns patch features
``[B, L*C, H/p, W/p]`` (p = patch size, 16 for every named torchvision architecture; L = the number of
blocks it reads, 1 by default); the segmentation decoders return logits ``[B, 1, p*h, p*w]`` for
features of an ``h x w`` grid (the image size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from featcache.core.errors import OptionError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def resolve_layers(layers: Sequence[int] | None, depth: int, arch: str) -> tuple[int, ...]:
    """Block numbers (1-based; -1 the last block, -2 the one before, ...) -> sorted distinct 1-based numbers.

    None: the last block alone (the final normed output).
    """
    if layers is None:
        return (depth,)
    out = set()
    for k in layers:
        if not (1 <= k <= depth or -depth <= k <= -1):
            raise OptionError(
                f"--layers {','.join(map(str, layers))}: {arch} has {depth} blocks; "
                f"give block numbers 1 to {depth}, or -1 (the last) to -{depth}"
            )
        out.add(k if k > 0 else depth + 1 + k)
    if not out:
        raise OptionError("--layers is empty; give block numbers such as -1 or 3,6,9,12")
    return tuple(sorted(out))


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
    ``layers`` (see `resolve_layers`): the blocks whose outputs (each through the final LayerNorm) are
    returned, concatenated on channels; by default the last one.
    """

    def __init__(self, arch: str, config: EncoderConfig, layers: Sequence[int] | None = None) -> None:
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
        self.layers = resolve_layers(layers, config.num_layers, arch)
        # Not persistent: the state dict stays exactly torchvision's key set without the head.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        """Channels L*C of the patch features (C per block read)."""
        return self.config.hidden_dim * len(self.layers)

    @property
    def layer_width(self) -> int:
        return self.config.hidden_dim

    @property
    def depth(self) -> int:
        return self.config.num_layers

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
        """Final-LayerNorm tokens ``[B, 1 + h*w, L*C]`` (CLS first; the blocks of ``layers`` side by side on
        channels) and the grid ``h, w``."""
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
        x = self.encoder.dropout(x)
        if self.layers == (self.depth,):
            return self.encoder.ln(self.encoder.layers(x)), h, w
        taken = []
        for k, block in enumerate(self.encoder.layers[: self.layers[-1]], start=1):
            x = block(x)
            if k in self.layers:
                taken.append(self.encoder.ln(x))
        return torch.cat(taken, dim=-1), h, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, L*C, H/p, W/p]`` (the CLS token dropped)."""
        tokens, h, w = self.forward_tokens(images)
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
