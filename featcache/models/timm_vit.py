"""Any timm ViT-style backbone (DINOv2, MAE, CLIP, SigLIP, EVA, SAM, ...) as a featcache encoder.

timm builds the model (``timm.create_model``), knows its preprocessing (``pretrained_cfg`` mean/std)
and gives its blocks' outputs as feature maps (``forward_intermediates(..., output_fmt="NCHW")``,
prefix tokens such as CLS and registers dropped). Models are built with ``dynamic_img_size`` where
they take it, so the positional embedding is resized to the grid of any image size. timm is an
optional dependency: ``pip install 'featcache[timm]'``.

Shapes: images ``[B, 3, H, W]`` in [0, 1] -> features ``[B, L*C, H/p, W/p]``, the selected blocks'
outputs (each through the model's final norm, as DINOv2's evaluation reads them) concatenated on
channels in block order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import seeded
from featcache.models.vit import resolve_layers

PREFIX = "timm:"
INSTALL = "pip install 'featcache[timm]'"


def import_timm():
    """The timm module, or one line with the command that installs it."""
    try:
        import timm
    except ImportError:
        raise FeatcacheError(f"timm encoders need the timm package; install it with `{INSTALL}`") from None
    return timm


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """timm logs each download and retry; the failure is said once, by the caller."""
    loggers = [logging.getLogger(name) for name in ("timm", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def create(name: str, *, weights: str, seed: int, model_kwargs: dict) -> nn.Module:
    """A timm model without its classifier.

    ``weights``: ``pretrained`` (timm's usual place: its Hugging Face cache, downloaded where the
    network allows), ``random`` (timm's initialisation under ``seed``) or a file (safetensors or a
    state dict, loaded the way timm loads its own: ``pretrained_cfg_overlay={"file": ...}``).
    """
    timm = import_timm()
    if not timm.is_model(name):
        raise FeatcacheError(
            f"timm has no model {name!r}; list them with "
            f"`python -c \"import timm; print(timm.list_models('*dinov2*', pretrained=True))\"`"
        )
    kwargs = {"num_classes": 0, "dynamic_img_size": True, **model_kwargs}
    if weights == "random":
        options: dict = {"pretrained": False}
    elif weights == "pretrained":
        options = {"pretrained": True}
    else:
        if not Path(weights).is_file():
            raise FeatcacheError(f"encoder weights {weights} not found; pass an existing file, or random")
        options = {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights)}}
    with seeded(seed), _quiet_hub():
        try:
            return _create(timm, name, options, kwargs=kwargs)
        except FeatcacheError:
            raise
        except Exception as exc:
            raise _explain(name, weights, exc) from exc


def _create(timm, name: str, options: dict, *, kwargs: dict) -> nn.Module:
    """``timm.create_model``; a model that does not take ``dynamic_img_size`` (SAM resizes by itself) without it."""
    try:
        return timm.create_model(name, **options, **kwargs)
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
        kwargs = {k: v for k, v in kwargs.items() if k != "dynamic_img_size"}
        return timm.create_model(name, **options, **kwargs)


def _explain(name: str, weights: str, exc: Exception) -> FeatcacheError:
    """One line for a failed ``create_model``: weights out of reach, or not this model's."""
    detail = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:200]
    if weights == "pretrained":
        return FeatcacheError(
            f"the pretrained weights of timm:{name} are not in timm's cache (the Hugging Face cache, $HF_HOME) and "
            f"could not be downloaded ({type(exc).__name__}); fetch them once where the network allows "
            f"(`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"`), or pass --encoder-weights "
            "FILE (safetensors or a state dict), or --encoder-weights random"
        )
    if weights == "random":
        return FeatcacheError(f"timm cannot build {name} with these options ({detail}); check --model-kwargs")
    return FeatcacheError(
        f"{weights} does not hold weights of timm:{name} ({detail}); pass that model's weights "
        "(with the --model-kwargs it was built with)"
    )


class TimmEncoder(nn.Module):
    """A timm model that maps images ``[B, 3, H, W]`` in [0, 1] to patch features ``[B, L*C, H/p, W/p]``.

    ``layers``: 1-based block numbers (sorted, distinct) whose outputs are returned; the default is
    the last block, i.e. the model's final normed output. Normalisation uses the model's
    ``pretrained_cfg`` mean/std, so any model's weights see the input they were trained on.
    """

    def __init__(self, name: str, model: nn.Module, model_kwargs: dict, *, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        if not all(hasattr(model, a) for a in ("forward_intermediates", "patch_embed", "blocks")):
            raise FeatcacheError(
                f"timm:{name} is not a ViT-style model with patch tokens (no forward_intermediates); "
                "featcache takes ViT-style encoders"
            )
        self.model = model
        self.name = name
        self.arch = PREFIX + name
        self.model_kwargs = dict(model_kwargs)
        cfg = model.pretrained_cfg
        self.mean_std = (tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"]))
        # Not persistent: the state dict (and its hash) is the timm model's alone.
        self.register_buffer("mean", torch.tensor(self.mean_std[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.mean_std[1]).view(1, 3, 1, 1), persistent=False)
        size = model.patch_embed.patch_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            raise FeatcacheError(f"timm:{name} has non-square patches {size}; featcache takes square ones")
        self.patch_size = int(size[0])
        self.depth = len(model.blocks)

        self.layers = resolve_layers(layers, self.depth, self.arch)
        with torch.no_grad():
            probe = self._maps(torch.zeros(1, 3, 2 * self.patch_size, 2 * self.patch_size), (self.depth,))
        self.layer_width = int(probe[0].shape[1])

    @property
    def width(self) -> int:
        """Channels L*C of the features (C per selected block)."""
        return self.layer_width * len(self.layers)

    def _maps(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=[k - 1 for k in layers], norm=True, output_fmt="NCHW", intermediates_only=True, stop_early=True
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, L*C, H/p, W/p]`` of images ``[B, 3, H, W]`` in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        p = self.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        maps = self._maps((images - self.mean) / self.std, self.layers)
        return maps[0] if len(maps) == 1 else torch.cat(maps, dim=1)

    def provenance(self) -> dict:
        """What the store records of the model besides its weights: library and version, model name,
        pretrained tag, mean/std, patch size, depth, width per block, prefix tokens and the build options."""
        import timm

        cfg = self.model.pretrained_cfg
        return {
            "library": "timm",
            "library_version": timm.__version__,
            "model": self.name,
            "pretrained_tag": cfg.get("tag"),
            "hf_hub_id": cfg.get("hf_hub_id"),
            "config": {
                "model_kwargs": self.model_kwargs,
                "patch_size": self.patch_size,
                "depth": self.depth,
                "layer_width": self.layer_width,
                "num_prefix_tokens": int(getattr(self.model, "num_prefix_tokens", 0)),
                "dynamic_img_size": bool(getattr(self.model, "dynamic_img_size", False)),
                "pretrained_input_size": list(cfg.get("input_size", ())),
            },
            "normalisation": {"mean": list(self.mean_std[0]), "std": list(self.mean_std[1])},
        }
