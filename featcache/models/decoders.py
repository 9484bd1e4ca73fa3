"""The decoders trained on an encoder's patch features: the study's segmentation (SD) and reconstruction (RD)
decoders and a per-patch linear probe, and the grouped form that trains K of them as one network.

Shapes: features ``[B, C, h, w]`` -> logits ``[B, 1, p*h, p*w]`` (p = the encoder's patch size; the image size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featcache.core.errors import OptionError


class ReconstructionDecoder(nn.Module):
    """The study's RD: four [Conv3x3, ReLU, Upsample x2 nearest] 768->512->256->128->64, Conv3x3 -> 3, Sigmoid.

    ``[B, C, h, w]`` features -> ``[B, 3, p*h, p*w]`` image in [0, 1] (p = ``patch_size``: bilinearly resized
    after the x16 path when p is not 16). 5,089,923 parameters at C = 768.
    """

    def __init__(self, in_channels: int = 768, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        for cin, cout in zip((in_channels, 512, 256, 128), (512, 256, 128, 64), strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="nearest"),
            ]
        layers += [nn.Conv2d(64, 3, 3, padding=1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return to_patch_scale(self.layers(features), features, self.patch_size)


def to_patch_scale(out: torch.Tensor, features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``out`` ``[B, K, 16h, 16w]`` of features ``[B, C, h, w]`` bilinearly resized to the image size
    ``[B, K, p*h, p*w]`` (a no-op for p = 16)."""
    size = (features.shape[-2] * patch_size, features.shape[-1] * patch_size)
    if tuple(out.shape[-2:]) == size:
        return out
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class SegmentationDecoder(nn.Module):
    """The study's SD: four [Conv3x3, BatchNorm, ReLU, Upsample x2 bilinear] C->256->128->64->32, Conv1x1 -> 1.

    ``[B, C, h, w]`` features -> logits ``[B, 1, p*h, p*w]`` (p = ``patch_size``: the x16 path, then bilinearly
    resized to the image size when p is not 16). 2,158,017 parameters at C = 768.
    With ``groups = K`` it is K independent decoders in one network (grouped convolutions, per-group
    BatchNorm channels): ``[B, K*C, h, w]`` -> ``[B, K, 16h, 16w]``, group k reading channels
    ``k*C:(k+1)*C``; see `group_state` / `stack_states`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        g = groups
        for cin, cout in zip((in_channels, 256, 128, 64), (256, 128, 64, 32), strict=True):
            layers += [
                nn.Conv2d(cin * g, cout * g, 3, padding=1, groups=g),
                nn.BatchNorm2d(cout * g),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
        layers.append(nn.Conv2d(32 * g, g, 1, groups=g))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return to_patch_scale(self.layers(features), features, self.patch_size)


class LinearProbe(nn.Module):
    """A per-patch linear classifier: Conv1x1(C -> 1), logits upsampled x p (the patch size) bilinearly.

    ``[B, C, h, w]`` features -> logits ``[B, 1, p*h, p*w]``; C + 1 parameters. ``groups``: as
    `SegmentationDecoder`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1, patch_size: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels * groups, groups, 1, groups=groups)
        self.scale = patch_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(features), scale_factor=self.scale, mode="bilinear", align_corners=False)


DECODERS: dict[str, type[nn.Module]] = {"sd": SegmentationDecoder, "linear": LinearProbe}


def build_decoder(name: str, in_channels: int, groups: int = 1, *, patch_size: int = 16) -> nn.Module:
    """A segmentation decoder by name (``sd`` or ``linear``) for features of ``in_channels`` from an encoder of
    ``patch_size`` (its logits are at the image size); ``groups`` of them in one."""
    if name not in DECODERS:
        raise OptionError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name](in_channels, groups, patch_size)


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K single decoders' state dicts -> the state dict of their grouped decoder (``groups=K``).

    Every parameter and BatchNorm buffer of a grouped layer is its groups' tensors concatenated
    along dim 0 (output channels); the scalar batch counters are shared.
    """
    return {k: v if v.ndim == 0 else torch.cat([s[k] for s in states]) for k, v in states[0].items()}


def group_state(
    state: dict[str, torch.Tensor], k: int, groups: int, *, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Group ``k``'s slice of a grouped decoder's state dict: a plain (``groups=1``) decoder's state, copied.

    On the CPU by default, so that slices taken at different times (some loaded from a resume state) stack
    together; the training loop keeps its copies on the device until the run ends (`featcache.train.loop.on_cpu`).
    """
    return {
        name: (v if v.ndim == 0 else v.chunk(groups)[k]).detach().to(device, copy=True) for name, v in state.items()
    }
