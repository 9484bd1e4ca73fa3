"""What a store and a checkpoint record of an encoder, defined once: its architecture, configuration,
normalisation, where its weights came from (`WeightsSource`) and their hash (`EncoderRecord`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from featcache.core.json_record import JsonRecord
from featcache.models.timm_vit import PREFIX as TIMM_PREFIX
from featcache.models.timm_vit import TimmEncoder
from featcache.models.vit import IMAGENET_MEAN, IMAGENET_STD, Encoder
from featcache.models.weights import weights_sha256

#: A featcache encoder checkpoint is a dict with this value under ``"format"``.
ENCODER_CHECKPOINT_FORMAT = "featcache-encoder/1"


@dataclass
class WeightsSource(JsonRecord):
    """Where an encoder's weights came from.

    ``kind``: ``random`` (the library's initialisation under ``seed``), ``imagenet`` (torchvision's file, named
    in ``file``), ``timm`` (a timm model's own pretrained weights), ``file`` (a weights file: its absolute path
    and ``sha256``) or ``featcache`` (a featcache encoder checkpoint, with ``init``: the weights its pretraining
    started from, whose ``weights_sha256`` and ``seed`` that record carries).
    """

    NESTED: ClassVar = {}
    OPTIONAL: ClassVar = ("seed", "file", "sha256", "weights_sha256")

    kind: str
    seed: int | None = None
    file: str | None = None
    sha256: str | None = None
    init: WeightsSource | None = None
    weights_sha256: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        out = super().to_json()
        if self.init is None and self.kind != "featcache":
            out.pop("init")  # a checkpoint's record says "no init known" (null); others have none at all
        return out

    def describe(self) -> str:
        """``random seed 0``, the file, or the kind: where the weights are, in a message."""
        if self.kind == "random":
            return f"random seed {self.seed}"
        return self.file or ("its pretrained weights" if self.kind == "timm" else self.kind)


WeightsSource.NESTED = {"init": WeightsSource}


@dataclass
class EncoderRecord(JsonRecord):
    """An encoder as a store or checkpoint records it (`record_of`).

    ``config``: the architecture's options (torchvision: `featcache.models.vit.EncoderConfig`'s fields; timm: its
    build options ``model_kwargs`` with patch size, depth, width per block and prefix tokens), ``normalisation``:
    the input mean/std per RGB channel (pixel range [0, 1]), ``layers``: the 1-based blocks read when not the last
    alone. A timm model's record also names the library and its version, the model, its pretrained tag and hub id.
    """

    NESTED: ClassVar = {"source": WeightsSource}
    OPTIONAL: ClassVar = ("layers",)
    TIMM_KEYS: ClassVar = ("library", "library_version", "model", "pretrained_tag", "hf_hub_id")

    arch: str
    config: dict
    normalisation: dict
    source: WeightsSource
    weights_sha256: str
    layers: list[int] | None = None
    library: str | None = None
    library_version: str | None = None
    model: str | None = None
    pretrained_tag: str | None = None
    hf_hub_id: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        out = super().to_json()
        timm = {key: out.pop(key) for key in self.TIMM_KEYS}
        # A timm model's identity (its tag and hub id may be null) right after its arch; a torchvision one has none.
        return {"arch": out.pop("arch"), **(timm if self.library is not None else {}), **out}

    @property
    def is_timm(self) -> bool:
        return self.arch.startswith(TIMM_PREFIX)

    @property
    def depth(self) -> int:
        """The number of blocks of the encoder."""
        return int(self.config["depth"] if "depth" in self.config else self.config["num_layers"])

    @property
    def read_layers(self) -> tuple[int, ...]:
        """The 1-based blocks the encoder read (without ``layers``: the last block alone)."""
        return tuple(self.layers or (self.depth,))

    @property
    def model_kwargs(self) -> dict | None:
        """A timm model's build options (None for a torchvision encoder)."""
        return self.config.get("model_kwargs") if self.is_timm else None

    def same_weights(self, other: EncoderRecord) -> bool:
        """Whether ``other`` is the same architecture with the same weights."""
        return (self.arch, self.weights_sha256) == (other.arch, other.weights_sha256)

    def init_record(self) -> EncoderRecord | None:
        """The record of the weights this encoder's pretraining started from (a featcache checkpoint that knows
        them), else None."""
        start = self.source.init if self.source.kind == "featcache" else None
        if start is None:
            return None
        return EncoderRecord(
            arch=self.arch,
            config=self.config,
            normalisation=self.normalisation,
            source=start,
            weights_sha256=start.weights_sha256,
            layers=self.layers,
        )

    def describe(self) -> str:
        """``vit_b_16 (imagenet: vit_b_16-c867db91.pth, weights 1a2b3c4d…)``: enough to tell two encoders apart."""
        return f"{self.arch} ({self.source.kind}: {self.source.describe()}, weights {self.weights_sha256[:10]}…)"


def encoder_config(encoder: Encoder | TimmEncoder) -> dict:
    """The architecture options a featcache encoder checkpoint records, for `featcache.models.spec` to rebuild it."""
    if isinstance(encoder, Encoder):
        return asdict(encoder.config)
    return {"model_kwargs": encoder.model_kwargs}


def normalisation(encoder: Encoder | TimmEncoder) -> dict:
    """The mean/std (per RGB channel, pixel range [0, 1]) the encoder normalises its input with."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if isinstance(encoder, Encoder) else encoder.mean_std
    return {"mean": list(mean), "std": list(std)}


def record_of(encoder: Encoder | TimmEncoder) -> EncoderRecord:
    """The record of an encoder at hand: architecture, config, where its weights came from, their hash, its
    normalisation; ``layers`` only when it reads other blocks than the last (a one-layer record has none).
    For a timm model also the library and its version, the model name, pretrained tag, patch size and depth."""
    if isinstance(encoder, Encoder):
        identity = {"config": asdict(encoder.config), "normalisation": normalisation(encoder)}
    else:
        identity = encoder.provenance()
    return EncoderRecord(
        arch=encoder.arch,
        **identity,
        source=getattr(encoder, "source", None) or WeightsSource("unknown"),
        weights_sha256=weights_sha256(encoder),
        layers=list(encoder.layers) if encoder.layers != (encoder.depth,) else None,
    )
