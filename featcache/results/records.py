"""What a training run leaves behind, defined once: its ``results.json`` (`RunResults`) and its decoder checkpoint
(`DecoderCheckpoint`), read and written through these records, never by string keys elsewhere.

The JSON on disk is the schema of docs/design.md plus what makes a run reproducible; files written by older
featcache versions (without the entries added since) still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from featcache.core.errors import FeatcacheError
from featcache.core.io import write_json
from featcache.core.json_record import JsonRecord, RecordError
from featcache.models.naming import encoder_words
from featcache.models.record import EncoderRecord, WeightsSource
from featcache.results.metrics import METRICS
from featcache.store.schema import DatasetRecord, Preprocessing

#: A featcache decoder checkpoint (``decoder.pt``) is a dict with this value under ``"format"``.
DECODER_CHECKPOINT_FORMAT = "featcache-decoder/1"


@dataclass
class Optimiser(JsonRecord):
    """SGD's settings of a run (no dampening, not Nesterov)."""

    name: str = "SGD"
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class TestScores(JsonRecord):
    """Mean test metrics over images (`featcache.results.metrics.METRICS`, study convention)."""

    __test__ = False  # not a pytest test class

    iou: float
    dice: float
    sensitivity: float
    specificity: float
    accuracy: float
    thresholded_jaccard: float
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """``{metric: value}`` in `METRICS` order."""
        return {name: getattr(self, name) for name in METRICS}


@dataclass
class History(JsonRecord):
    """Mean training and validation loss per epoch (BCE; index 0 is epoch 1)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class GroupShare(JsonRecord):
    """A run trained with others as one grouped network: the group's seeds and seconds (and, for a grid, the
    learning rates and weight decays of its runs)."""

    OPTIONAL: ClassVar = ("lrs", "weight_decays")

    runs: int
    seeds: list[int]
    train_seconds: float
    total_seconds: float
    lrs: list[float] | None = None
    weight_decays: list[float] | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class LoraRecord(JsonRecord):
    """A LoRA run's adapters: rank, alpha (scaling alpha / rank), the encoder weights they update (its state-dict
    keys, merged into them for `featcache predict`) and the parameters they hold (all that trains in the
    encoder)."""

    rank: int
    alpha: float
    weights: list[str]
    trainable: int
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class RunEncoder(JsonRecord):
    """The encoder a run's features came from (for a store mode: the store's): its ``description`` in words
    (`featcache.models.naming.encoder_words`), architecture, where its weights came from, the sha256 of the
    weights the run started from, and whether the run trained it."""

    NESTED: ClassVar = {"source": WeightsSource}

    description: str
    arch: str
    source: WeightsSource
    weights_sha256: str
    trained: bool
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, record: EncoderRecord, *, trained: bool) -> RunEncoder:
        """What a run records of the encoder of ``record``."""
        return cls(
            description=encoder_words(record),
            arch=record.arch,
            source=record.source,
            weights_sha256=record.weights_sha256,
            trained=trained,
        )


@dataclass
class SelectionRecord(JsonRecord):
    """How a run's training images were chosen (`featcache.selection`): the ``strategy`` (``random``: the seeded
    subsets every sweep draws; ``file``: the first ids of a person's ``file``), its ``seed`` (None for a file),
    whether its subsets nest across sizes, and its parameters (the pooling and blocks compared among them)."""

    OPTIONAL: ClassVar = ("file",)

    strategy: str
    seed: int | None
    nested: bool
    params: dict = field(default_factory=dict)
    file: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class RunResults(JsonRecord):
    """One run's ``results.json``: its mode, size and seed, the plan it trained with (validation size, epochs,
    batch), the kept epoch, synchronised seconds (training steps alone, and with validation), the test metrics,
    its configuration (``config``: `featcache.train.TrainConfig`'s fields), its training ids and loss history.

    ``group``: set when it trained within a grouped network (its seconds are then its share of the group's);
    ``store_identity``: what a resumed sweep compares to keep the run (config, device type, encoder hash, dataset);
    ``encoder``: the encoder it used (`RunEncoder`); ``degenerate``: why its test predictions are degenerate
    (`featcache.results.degenerate`; empty when they are not, None in files written before the check).
    ``train_blocks``: k of modes Tk and Pk (``mode`` is then ``T2``, ``P2``, ...); ``trainable_parameters``: what
    trained (decoder, and encoder or its last blocks or their ``lora`` adapters).
    ``selection``: how its training images were chosen, when a label selection was asked for.
    """

    NESTED: ClassVar = {
        "optimiser": Optimiser,
        "test": TestScores,
        "history": History,
        "group": GroupShare,
        "encoder": RunEncoder,
        "lora": LoraRecord,
        "selection": SelectionRecord,
    }
    OPTIONAL: ClassVar = (
        "group",
        "store_identity",
        "encoder",
        "degenerate",
        "train_blocks",
        "trainable_parameters",
        "lora",
        "selection",
    )

    mode: str
    train_blocks: int | None = None
    size: int
    seed: int
    val_size: int
    epochs: int
    batch_size: int
    best_epoch: int
    best_val_loss: float = float("inf")
    train_seconds: float
    total_seconds: float
    cuda_graphs: bool = False
    augment: str
    device: str
    decoder: str = "sd"
    eval_size: str = "224"
    optimiser: Optimiser = field(default_factory=Optimiser)
    test: TestScores
    test_images: int = 0
    config: dict = field(default_factory=dict)
    train_ids: list[str] = field(default_factory=list)
    history: History = field(default_factory=History)
    group: GroupShare | None = None
    store_identity: dict | None = None
    encoder: RunEncoder | None = None
    degenerate: list[str] | None = None
    trainable_parameters: int | None = None
    lora: LoraRecord | None = None
    selection: SelectionRecord | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def lr(self) -> float:
        return self.optimiser.lr

    @property
    def weight_decay(self) -> float:
        return self.optimiser.weight_decay

    def write(self, path: Path) -> None:
        """``results.json`` at ``path``, atomically."""
        write_json(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> RunResults:
        """The ``results.json`` at ``path``; one line naming the file when it is not one."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (ValueError, RecordError, TypeError) as exc:
            raise FeatcacheError(
                f"{path} is not a featcache results.json ({exc}); delete it to train the run again"
            ) from exc

    def summary_json(self) -> dict[str, Any]:
        """The results as a checkpoint keeps them: without the history, training ids and sweep identity."""
        return {k: v for k, v in self.to_json().items() if k not in ("history", "train_ids", "store_identity")}


@dataclass(kw_only=True)
class CheckpointStore(JsonRecord):
    """What a decoder checkpoint keeps of the store it was trained from: where it was, its encoder, the
    preprocessing and the dataset, so that `featcache predict` can rebuild the encoder and check it."""

    NESTED: ClassVar = {"encoder": EncoderRecord, "preprocessing": Preprocessing, "dataset": DatasetRecord}

    path: str
    encoder: EncoderRecord
    preprocessing: Preprocessing
    dataset: DatasetRecord
    dataset_root: str | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass(kw_only=True)
class DecoderCheckpoint:
    """A run's ``decoder.pt``: the kept decoder weights (and a trained encoder's, for the encoder modes), the
    decoder's name, input channels and patch size, the stored blocks it reads, the store's record, the run's
    configuration and results (without history)."""

    decoder: str
    in_channels: int
    layers: list[int]
    patch_size: int
    state_dict: dict
    encoder_state_dict: dict | None
    store: CheckpointStore
    config: dict
    results: RunResults

    def to_dict(self) -> dict[str, Any]:
        """The dict `torch.save` writes."""
        return {
            "format": DECODER_CHECKPOINT_FORMAT,
            "decoder": self.decoder,
            "in_channels": self.in_channels,
            "layers": self.layers,
            "patch_size": self.patch_size,
            "state_dict": self.state_dict,
            "encoder_state_dict": self.encoder_state_dict,
            "store": self.store.to_json(),
            "config": self.config,
            "results": self.results.summary_json(),
        }

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> DecoderCheckpoint:
        """The checkpoint `torch.load` read from ``path``; one line when it is not a featcache decoder checkpoint."""
        if not isinstance(data, dict) or data.get("format") != DECODER_CHECKPOINT_FORMAT:
            raise FeatcacheError(f"{path} is not a featcache decoder checkpoint; pass a train-decoder output folder")
        try:
            return cls(
                decoder=data["decoder"],
                in_channels=data["in_channels"],
                layers=data.get("layers"),
                patch_size=data.get("patch_size", 16),
                state_dict=data["state_dict"],
                encoder_state_dict=data.get("encoder_state_dict"),
                store=CheckpointStore.from_json(data["store"]),
                config=data["config"],
                results=RunResults.from_json(data["results"]),
            )
        except (KeyError, RecordError, TypeError) as exc:
            raise FeatcacheError(f"{path}: the decoder checkpoint is damaged ({exc}); train the run again") from exc
