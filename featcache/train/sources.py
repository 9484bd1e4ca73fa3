"""Feature sources: where a training step's decoder input comes from, and how flips are applied.

C mode reads features from the store (no encoder runs); the encoder modes run an encoder on the
store's uint8 images. Augmentation draws one view per sample (0 identity, 1 h, 2 v, 3 hv:
independent horizontal and vertical flips with probability 1/2, as the study's
RandomHorizontalFlip + RandomVerticalFlip): ``exact`` picks the stored features of that flipped
image, ``feature-flip`` flips the identity features instead (an approximation for ViTs), encoder
modes flip the image. The caller flips the mask to match.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from featcache.models.vit import Encoder


def flip_per_sample(x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    """Flip each sample of ``x`` ``[B, ..., H, W]`` as its view says (0 identity, 1 h, 2 v, 3 hv).

    Branch-free (bit 0 of the view: horizontal, bit 1: vertical), so it never waits on the GPU.
    """
    shape = (-1,) + (1,) * (x.ndim - 1)
    h = (views & 1).bool().view(shape)
    v = (views & 2).bool().view(shape)
    x = torch.where(h, x.flip(-1), x)
    return torch.where(v, x.flip(-2), x)


class FeatureSource(Protocol):
    """Where a mode's features come from. Rows index the tensors the source was built with."""

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor: ...

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> list[nn.Parameter]: ...

    def train(self, on: bool) -> None: ...


class StoreFeatures:
    """C mode: features ``[n, V, C, h, w]`` read from the store; no encoder runs.

    ``positions`` ``[m]`` (optional) maps this run's rows to rows of ``features``, so the runs of a
    group share one copy of the features they have in common.
    """

    def __init__(self, features: torch.Tensor, augment: str, positions: torch.Tensor | None = None) -> None:
        self.features = features
        self.augment = augment
        self.positions = positions

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.positions is None else self.positions[rows]

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        rows = self._rows(rows)
        if views is None:
            return self.features[rows, 0].float()
        if self.augment == "exact":
            return self.features[rows, views].float()
        return flip_per_sample(self.features[rows, 0], views).float()

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self.features[self._rows(rows), 0].float()

    def parameters(self) -> list[nn.Parameter]:
        return []

    def train(self, on: bool) -> None:
        pass


class EncoderFeatures:
    """Encoder modes: the encoder runs on the (flipped) uint8 images ``[n, 3, S, S]`` every step."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, trainable: bool) -> None:
        self.encoder = encoder
        self.images = images
        self.trainable = trainable

    def _encode(self, images: torch.Tensor, grad: bool) -> torch.Tensor:
        x = images.float().div_(255)
        if x.is_cuda:  # as extraction feeds the encoder, so F and C start from the same computation
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.set_grad_enabled(grad):
            return self.encoder(x)

    def train_features(self, rows: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        images = self.images[rows]
        if views is not None:
            images = flip_per_sample(images, views)
        return self._encode(images, self.trainable)

    def eval_features(self, rows: torch.Tensor) -> torch.Tensor:
        return self._encode(self.images[rows], False)

    def parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters that train (all of E's; of a Pk network, its last blocks')."""
        return [p for p in self.encoder.parameters() if p.requires_grad] if self.trainable else []

    def train(self, on: bool) -> None:
        self.encoder.train(on and self.trainable)


def nhwc(features: torch.Tensor) -> torch.Tensor:
    """Decoder input in channels_last: its convolutions run about twice as fast, on the CPU too
    (measured), and every mode gets the same layout, so the comparison stays fair."""
    return features.contiguous(memory_format=torch.channels_last)


def stacked(
    sources: list[FeatureSource], rows: list[torch.Tensor], views: list[torch.Tensor | None] | None
) -> torch.Tensor:
    """Group k's features side by side on the channel axis: ``[B, K*C, h, w]``, channels_last."""
    if views is None:
        feats = [src.eval_features(r) for src, r in zip(sources, rows, strict=True)]
    else:
        feats = [src.train_features(r, v) for src, r, v in zip(sources, rows, views, strict=True)]
    return nhwc(feats[0] if len(feats) == 1 else torch.cat(feats, dim=1))
