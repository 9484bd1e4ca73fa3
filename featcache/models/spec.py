"""`EncoderSpec`: the one way an encoder is named, built and rebuilt.

The command line names an encoder in words (``--encoder imagenet | random | FILE | timm:NAME`` with
``--arch``, ``--encoder-weights``, ``--model-kwargs``, ``--layers``); a store or checkpoint names one by its
record (`featcache.models.record.EncoderRecord`). Both become an `EncoderSpec` once (`EncoderSpec.parse`,
`EncoderSpec.recorded`, `EncoderSpec.like`), and `EncoderSpec.build` builds it: a rebuilt encoder is proven
to be the recorded one by the hash of its weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.io import safe_torch_load
from featcache.core.runtime import seeded
from featcache.models.record import ENCODER_CHECKPOINT_FORMAT, EncoderRecord, WeightsSource
from featcache.models.timm_vit import PREFIX as TIMM_PREFIX
from featcache.models.timm_vit import TimmEncoder, create
from featcache.models.vit import Encoder, EncoderConfig, architecture
from featcache.models.weights import (
    file_sha256,
    imagenet_state_dict,
    imagenet_weights_path,
    load_encoder_weights,
    weights_sha256,
)

#: Either kind of encoder: both map images ``[B, 3, H, W]`` in [0, 1] to features ``[B, L*C, H/p, W/p]``.
AnyEncoder = Encoder | TimmEncoder
#: The weights that are words, not files.
NAMED_WEIGHTS = ("random", "imagenet", "pretrained")


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to build: its architecture, starting weights and the blocks it reads.

    ``arch``: a torchvision architecture (`featcache.models.vit.ARCHITECTURES`) or ``timm:NAME`` (any timm model,
    built with ``model_kwargs``). ``weights``: ``random`` (the library's initialisation under ``seed``),
    ``imagenet`` (torchvision's IMAGENET1K_V1 file, from its cache or downloaded where reachable), ``pretrained``
    (a timm model's own weights), a weights file (a torchvision state dict; for timm, safetensors or a state
    dict) or a featcache encoder checkpoint (whose architecture wins over ``arch``). ``layers``: the blocks read
    (`featcache.models.vit.resolve_layers`; None: the last). ``expect_sha256``: the hash the built weights must
    have (a rebuilt, recorded encoder); ``recorded_as``: what the record said, for the message when they do not;
    ``given``: the weights file was passed on the command line (``--encoder FILE``), not taken from the record.
    """

    arch: str = "vit_b_16"
    weights: str = "random"
    seed: int = 0
    layers: tuple[int, ...] | None = None
    model_kwargs: dict = field(default_factory=dict)
    expect_sha256: str | None = None
    recorded_as: str = ""
    given: bool = False

    @property
    def is_timm(self) -> bool:
        """Whether timm builds the encoder (``timm:NAME`` as the architecture or as the weights)."""
        return self.arch.startswith(TIMM_PREFIX) or self.weights.startswith(TIMM_PREFIX)

    @property
    def weights_file(self) -> Path | None:
        """The weights file, when the weights are one (not a word, nor a timm model's own)."""
        return None if self.weights in NAMED_WEIGHTS or self.weights.startswith(TIMM_PREFIX) else Path(self.weights)

    @classmethod
    def parse(
        cls,
        encoder: str,
        *,
        arch: str = "vit_b_16",
        weights: str | None = None,
        model_kwargs: dict | None = None,
        layers: Sequence[int] | None = None,
        seed: int = 0,
    ) -> EncoderSpec:
        """The spec of the command line's ``--encoder`` (or ``--init``: imagenet, random, a file, ``timm:NAME``),
        ``--arch``, ``--encoder-weights`` (a timm model's: None for its pretrained ones) and ``--model-kwargs``."""
        layers = tuple(layers) if layers is not None else None
        if str(encoder).startswith(TIMM_PREFIX):
            return cls(str(encoder), weights or "pretrained", seed, layers, dict(model_kwargs or {}))
        if weights is not None or model_kwargs:
            option = "--encoder-weights" if weights is not None else "--model-kwargs"
            raise OptionError(
                f"{option} goes with --encoder timm:NAME; a torchvision encoder takes its weights as "
                "--encoder imagenet | random | FILE"
            )
        return cls(arch, str(encoder), seed, layers)

    @classmethod
    def like(cls, record: EncoderRecord, weights: str | Path, *, layers: Sequence[int] | None = None) -> EncoderSpec:
        """The architecture of ``record`` (a timm model with its recorded build options) with other ``weights``
        (imagenet, random, a file or ``timm:NAME``), reading ``layers`` (None: the recorded ones)."""
        return cls(
            record.arch,
            str(weights),
            record.source.seed or 0,
            tuple(layers) if layers is not None else record.read_layers,
            dict(record.model_kwargs or {}),
        )

    @classmethod
    def recorded(
        cls, record: EncoderRecord, *, weights_file: str | Path | None = None, layers: Sequence[int] | None = None
    ) -> EncoderSpec:
        """The encoder ``record`` describes, to be rebuilt from where its weights came from and proven by their
        hash; ``weights_file``: where its weights file is now, if it moved (checked by the hash all the same)."""
        source = record.source
        if weights_file is not None:
            weights = str(weights_file)
        elif source.kind == "random":
            weights = "random"
        elif source.kind in ("imagenet", "timm"):
            weights = "imagenet" if source.kind == "imagenet" else "pretrained"
        elif source.kind in ("file", "featcache"):
            if not Path(source.file).is_file():
                raise FeatcacheError(
                    f"the encoder weights {source.file} that the features were extracted with are not there; "
                    "pass --encoder with the file's new path (it is checked against the recorded hash)"
                )
            weights = source.file
        else:
            raise FeatcacheError(f"cannot rebuild an encoder of unknown origin ({source.kind})")
        spec = cls.like(record, weights, layers=layers)
        return replace(
            spec,
            expect_sha256=record.weights_sha256,
            recorded_as=source.file or source.kind,
            given=weights_file is not None,
        )

    def build(self) -> AnyEncoder:
        """The encoder, in eval mode, with ``source`` (a `WeightsSource`) saying where its weights came from;
        refused when ``expect_sha256`` is set and its weights hash to another value."""
        encoder = self._build()
        if self.expect_sha256 is not None and weights_sha256(encoder) != self.expect_sha256:
            raise FeatcacheError(self._mismatch(weights_sha256(encoder)))
        return encoder

    def _mismatch(self, found: str) -> str:
        """The one line for a rebuilt encoder whose weights hash to ``found``, not to ``expect_sha256``: which file
        or source gave them, and the ways to the right ones."""
        hashes = f"({found[:10]}…) than the one recorded ({self.expect_sha256[:10]}…, from {self.recorded_as})"
        original = "the weights file the store was extracted with"
        if self.given:  # --encoder FILE: the wrong file, or the right one replaced by another
            recorded_there = not Path(self.recorded_as).is_absolute() or Path(self.recorded_as).is_file()
            ways = (
                f"drop --encoder to rebuild it from {self.recorded_as}, or pass {original}"
                if recorded_there
                else f"pass {original} (recorded as {self.recorded_as}, no longer there; checked by its hash)"
            )
            return f"--encoder {self.weights} holds other weights {hashes}; {ways}"
        if self.weights_file is not None:  # the recorded file is there, but other weights are in it now
            return (
                f"the weights file {self.weights} has other weights {hashes}: it was replaced since the extraction; "
                f"put {original} back there, or pass it with --encoder wherever it is now (checked by its hash)"
            )
        return (
            f"the {self.arch} encoder rebuilt from {self.weights} has other weights {hashes}: this library version "
            f"makes them differently; pass {original} with --encoder (checked by its hash)"
        )

    def _build(self) -> AnyEncoder:
        arch, weights = self.arch, self.weights
        if weights.startswith(TIMM_PREFIX):
            arch, weights = weights, "pretrained"
        path = None if weights in NAMED_WEIGHTS else Path(weights)
        loaded = _load_weights_file(path) if path is not None else None
        ckpt = loaded if isinstance(loaded, dict) and loaded.get("format") == ENCODER_CHECKPOINT_FORMAT else None
        if ckpt is not None:
            arch = ckpt["arch"]
        if arch.startswith(TIMM_PREFIX):
            return _build_timm(replace(self, arch=arch, weights=weights), ckpt=ckpt, path=path)
        if weights == "pretrained":
            raise FeatcacheError(
                f"pretrained names a timm model's own weights; the torchvision {arch} takes imagenet, "
                "random or a weights file (or pass --encoder timm:NAME)"
            )
        if path is not None and loaded is None:
            raise FeatcacheError(
                f"{path}: the torchvision {arch} takes a torch state-dict file (.pt/.pth); "
                "safetensors files are for timm encoders (--encoder timm:NAME --encoder-weights FILE)"
            )
        config = EncoderConfig(**ckpt["config"]) if ckpt else architecture(arch)
        with seeded(self.seed):
            encoder = Encoder(arch, config, self.layers)
        encoder.source = _load_torchvision(encoder, weights=weights, seed=self.seed, path=path, loaded=loaded)
        return encoder.eval()


def build_encoder(
    arch: str = "vit_b_16",
    weights: str | Path = "random",
    seed: int = 0,
    *,
    layers: Sequence[int] | None = None,
    model_kwargs: dict | None = None,
) -> AnyEncoder:
    """`EncoderSpec` ``(arch, weights, seed, layers, model_kwargs)`` built: an encoder of a named architecture with
    its starting weights (see `EncoderSpec` for the words ``weights`` takes)."""
    spec = EncoderSpec(arch, str(weights), seed, tuple(layers) if layers is not None else None, model_kwargs or {})
    return spec.build()


def _load_weights_file(path: Path) -> object | None:
    """A weights file's torch contents (None for safetensors, which timm reads itself); refused if missing."""
    if not path.is_file():
        raise FeatcacheError(f"encoder weights {path} not found; pass imagenet, random or an existing file")
    return None if path.suffix == ".safetensors" else safe_torch_load(path)


def _checkpoint_source(path: Path, ckpt: dict) -> WeightsSource:
    init = ckpt.get("init")
    return WeightsSource(
        "featcache",
        file=str(path.resolve()),
        sha256=file_sha256(path),
        init=WeightsSource.from_json(init) if init is not None else None,
    )


def _load_torchvision(
    encoder: Encoder, *, weights: str, seed: int, path: Path | None, loaded: object | None
) -> WeightsSource:
    """Load ``weights`` into a torchvision ``encoder``; where they came from."""
    if weights == "random":
        return WeightsSource("random", seed=seed)
    if weights == "imagenet":
        load_encoder_weights(encoder, imagenet_state_dict(encoder.arch), f"ImageNet weights for {encoder.arch}")
        return WeightsSource("imagenet", file=imagenet_weights_path(encoder.arch).name)
    if isinstance(loaded, dict) and loaded.get("format") == ENCODER_CHECKPOINT_FORMAT:
        load_encoder_weights(encoder, loaded["state_dict"], str(path))
        return _checkpoint_source(path, loaded)
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise FeatcacheError(f"{path} is neither a torchvision state dict nor a featcache encoder checkpoint")
    load_encoder_weights(encoder, loaded, str(path))
    return WeightsSource("file", file=str(path.resolve()), sha256=file_sha256(path))


def _build_timm(spec: EncoderSpec, *, ckpt: dict | None, path: Path | None) -> TimmEncoder:
    """A `TimmEncoder`; a featcache checkpoint of one is its model (built with the checkpoint's options) and weights."""
    name = spec.arch[len(TIMM_PREFIX) :]
    if ckpt is not None:
        kwargs = ckpt["config"]["model_kwargs"]
        encoder = TimmEncoder(
            name, create(name, weights="random", seed=spec.seed, model_kwargs=kwargs), kwargs, layers=spec.layers
        )
        try:
            encoder.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise FeatcacheError(
                f"{path} does not fit timm:{name} ({detail}); write it again with featcache pretrain"
            ) from exc
        encoder.source = _checkpoint_source(path, ckpt)
        return encoder.eval()
    if spec.weights == "imagenet":
        raise FeatcacheError(
            f"imagenet names torchvision's weights; timm:{name} takes its own (leave out "
            "--encoder-weights), random or a weights file"
        )
    kwargs = dict(spec.model_kwargs)
    model = create(name, weights=spec.weights, seed=spec.seed, model_kwargs=kwargs)
    encoder = TimmEncoder(name, model, kwargs, layers=spec.layers)
    if spec.weights == "random":
        encoder.source = WeightsSource("random", seed=spec.seed)
    elif spec.weights == "pretrained":
        encoder.source = WeightsSource("timm")
    else:
        encoder.source = WeightsSource("file", file=str(Path(spec.weights).resolve()), sha256=file_sha256(path))
    return encoder.eval()
