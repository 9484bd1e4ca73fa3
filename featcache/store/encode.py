"""The encoder over uint8 images and their flip views, as extraction feeds it (and as the encoder check does)."""

from __future__ import annotations

import torch

from featcache.core.runtime import autocast
from featcache.models.spec import AnyEncoder
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
