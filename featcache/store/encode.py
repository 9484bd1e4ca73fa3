"""The encoder over uint8 images and their flip views, as extraction feeds it (and as the encoder check does); with
``--tail-tokens``, the tokens entering its last blocks from the same pass."""

from __future__ import annotations

import torch

from featcache.core.runtime import autocast
from featcache.models.spec import AnyEncoder
from featcache.models.tail import features_and_tail_tokens
from featcache.store.schema import VIEW_FLIPS


def view_batch(images: torch.Tensor, view_names: tuple[str, ...]) -> torch.Tensor:
    """``[B, 3, S, S]`` -> ``[B * V, 3, S, S]``, sample-major (sample 0's views first)."""
    views = [images.flip(VIEW_FLIPS[v]) if VIEW_FLIPS[v] else images for v in view_names]
    return torch.stack(views, dim=1).flatten(0, 1)


@torch.no_grad()
def encode_views(
    encoder: AnyEncoder,
    images_u8: torch.Tensor,
    view_names: tuple[str, ...],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images ``[B, 3, S, S]`` -> features ``[B, V, L*C, S/p, S/p]`` in ``dtype``, on ``device``.

    The cast to ``dtype`` (the store's) goes through float32 wherever it runs, so its result does not depend on
    the device that casts; on a GPU it halves the bytes copied back.
    """
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    x = view_batch(x, view_names)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        feats = encoder(x)
    return feats.float().to(dtype).unflatten(0, (images_u8.shape[0], len(view_names)))


@torch.no_grad()
def encode_views_and_tokens(
    encoder: AnyEncoder,
    images_u8: torch.Tensor,
    view_names: tuple[str, ...],
    *,
    tail: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`encode_views` and, from the same pass, the tokens ``[B, V, T, C]`` entering the encoder's last ``tail``
    blocks (`featcache.models.tail.tail_tokens`), both in ``dtype`` on ``device``; the features are bit for bit
    those `encode_views` gives."""
    x = images_u8.to(device, non_blocking=True).float().div_(255)
    x = view_batch(x, view_names)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device):
        feats, tokens = features_and_tail_tokens(encoder, x, tail)
    shape = (images_u8.shape[0], len(view_names))
    return feats.float().to(dtype).unflatten(0, shape), tokens.float().to(dtype).unflatten(0, shape)
