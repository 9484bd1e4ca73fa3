"""An encoder in words, built once from its record for the report, the tables and ``results.json``: which
architecture, where its weights came from, and which file (``random ViT-Ti/16``, ``ImageNet ViT-B/16``,
``timm vit_small_patch14_dinov2 (random weights)``, ``ViT-B/16 from file enc.pt sha256 1a2b3c4d``)."""

from __future__ import annotations

import re
from pathlib import Path

from featcache.models.record import EncoderRecord, WeightsSource
from featcache.models.timm_vit import PREFIX as TIMM_PREFIX

_TORCHVISION = re.compile(r"vit_([a-z]+)_(\d+)")
_SIZES = {"b": "B", "s": "S", "ti": "Ti", "l": "L", "h": "H"}
HASH_DIGITS = 8


def arch_name(arch: str) -> str:
    """``vit_b_16`` -> ``ViT-B/16``, ``vit_mini`` -> ``ViT-mini``; a timm model -> ``timm NAME``."""
    if arch.startswith(TIMM_PREFIX):
        return f"timm {arch.removeprefix(TIMM_PREFIX)}"
    match = _TORCHVISION.fullmatch(arch)
    if match:
        return f"ViT-{_SIZES.get(match.group(1), match.group(1))}/{match.group(2)}"
    return arch.replace("vit_", "ViT-")


def _file(source: WeightsSource) -> str:
    """``file enc.pt sha256 1a2b3c4d`` (the file's own hash), or ``file enc.pt``."""
    name = Path(source.file).name if source.file else "?"
    return f"file {name} sha256 {source.sha256[:HASH_DIGITS]}" if source.sha256 else f"file {name}"


def _start(source: WeightsSource | None) -> str:
    """Where a featcache pretraining started: ``ImageNet``, ``random weights``, a file, or ``unrecorded weights``."""
    if source is None:
        return "unrecorded weights"
    if source.kind == "imagenet":
        return "ImageNet"
    if source.kind == "random":
        return "random weights"
    if source.kind == "timm":
        return "timm's pretrained weights"
    return _file(source) if source.file else source.kind


def encoder_words(record: EncoderRecord) -> str:
    """The encoder of ``record`` in words: its architecture and where its weights came from.

    ``random ViT-Ti/16``, ``ImageNet ViT-B/16``, ``timm vit_small_patch14_dinov2 (random weights)``,
    ``timm NAME (pretrained)``, ``ViT-B/16 from file enc.pt sha256 1a2b3c4d``, and for a featcache checkpoint
    ``ViT-B/16 denoising-pretrained from ImageNet (file enc.pt sha256 1a2b3c4d)``.
    """
    name, source = arch_name(record.arch), record.source
    timm = record.arch.startswith(TIMM_PREFIX)
    if source.kind == "random":
        return f"{name} (random weights)" if timm else f"random {name}"
    if source.kind == "imagenet":
        return f"ImageNet {name}"
    if source.kind == "timm":
        return f"{name} (pretrained)"
    if source.kind == "file":
        return f"{name} from {_file(source)}"
    if source.kind == "featcache":
        return f"{name} denoising-pretrained from {_start(source.init)} ({_file(source)})"
    return f"{name} (weights of unknown origin)"


def weights_words(record: EncoderRecord) -> str:
    """``weights sha256 1a2b3c4d``: the hash of the encoder's state dict, short, to tell two apart."""
    return f"weights sha256 {record.weights_sha256[:HASH_DIGITS]}"
