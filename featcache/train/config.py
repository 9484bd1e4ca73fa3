"""A run's configuration: `TrainConfig`, one decoder training run (the study's protocol where left None)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.core.errors import OptionError, check_choice
from featcache.models.decoders import DECODERS
from featcache.selection.strategies import STRATEGIES
from featcache.store.feature_store import FeatureStore
from featcache.train.modes import parse_mode
from featcache.train.protocol import Plan, plan_run

AUGMENTS = ("exact", "feature-flip", "none")
EVAL_SIZES = ("224", "original")


@dataclass
class TrainConfig:
    """One decoder training run. None means: the study's protocol for ``size`` (see `featcache.train.protocol`).

    ``train_blocks`` k: the encoder's last k blocks train with the decoder (modes Tk, Pk; 0: they do not);
    ``lora_rank`` (with ``lora_alpha``, None: the rank): LoRA adapters on those blocks train instead of them.
    """

    size: int
    seed: int = 0
    augment: str = "exact"
    decoder: str = "sd"
    epochs: int | None = None
    batch_size: int | None = None
    val_size: int | None = None
    lr: float = 2e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    eval_size: str = "224"
    eval_batch_size: int = 64
    layers: tuple[int, ...] | None = None  # the stored blocks read (FeatureStore.layer_positions); None: all
    train_blocks: int = 0
    lora_rank: int | None = None
    lora_alpha: float | None = None
    train_ids: tuple[str, ...] | None = None  # the training images a label selection chose; None: the seeded subset

    def validate(self) -> None:
        """Refuse option values that can never be valid (a usage error)."""
        check_choice("--augment", self.augment, AUGMENTS)
        if self.decoder not in DECODERS:
            raise OptionError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        check_choice("--eval-size", self.eval_size, EVAL_SIZES)
        check_optimiser((self.lr,), (self.weight_decay,))
        if self.train_blocks < 0:
            raise OptionError(f"--train-blocks {self.train_blocks} must be 0 (mode C) or more")
        check_lora(self.lora_rank, self.lora_alpha, trains_blocks=self.train_blocks > 0)
        if self.train_ids is not None and len(self.train_ids) != self.size:
            raise OptionError(f"train_ids names {len(self.train_ids)} images but the size is {self.size}; give as many")

    def plan(self, store: FeatureStore) -> Plan:
        """The plan of this run on ``store``: options checked, protocol defaults applied, sizes checked against
        the store's splits (`plan_run`)."""
        self.validate()
        return plan_run(
            self.size,
            self.epochs,
            self.batch_size,
            val_size=self.val_size,
            n_train=len(store.indices("train")),
            n_val=len(store.indices("val")),
            where=str(store.path),
        )


def check_optimiser(lrs: tuple[float, ...], weight_decays: tuple[float, ...]) -> None:
    """Refuse learning rates and weight decays that can never be valid (a usage error)."""
    if not lrs or not weight_decays:
        raise OptionError("--lr and --weight-decay need at least one value each")
    for lr in lrs:
        if not lr > 0 or lr == float("inf"):
            raise OptionError(f"--lr {lr} must be a positive number")
    for wd in weight_decays:
        if not wd >= 0 or wd == float("inf"):
            raise OptionError(f"--weight-decay {wd} must be a number, 0 or more")


def check_lora(rank: int | None, alpha: float | None, *, trains_blocks: bool) -> None:
    """Refuse LoRA options that can never be valid (a usage error): adapters need trained encoder blocks, a rank
    of 1 or more and a positive, finite alpha."""
    if rank is None and alpha is None:
        return
    if rank is None:
        raise OptionError(f"--lora-alpha {alpha} goes with --lora-rank R")
    if not trains_blocks:
        raise OptionError(
            f"--lora-rank {rank}: adapters go on trained encoder blocks; give --train-blocks k (1 or more) or modes "
            "Tk / Pk, or leave --lora-rank out"
        )
    if rank < 1:
        raise OptionError(f"--lora-rank {rank} must be at least 1")
    if alpha is not None and not (alpha > 0 and alpha != float("inf")):
        raise OptionError(f"--lora-alpha {alpha} must be a positive number")


@dataclass(frozen=True)
class RunKey:
    """One run of a sweep: its mode, training-set size, seed, learning rate, weight decay and label selection."""

    mode: str
    size: int
    seed: int
    lr: float
    weight_decay: float
    selection: str = "random"


@dataclass
class SweepConfig:
    """What ``featcache train-decoder`` takes: C-mode runs of one ``size`` from the ``store``, one per seed, or per
    seed and (learning rate, weight decay) of a grid (``lrs`` x ``weight_decays`` with several values).

    None epochs/batch/val follow the study's protocol for ``size``; ``layers``: the stored blocks read (None:
    all); ``encoder``: the encoder the store must hold (imagenet | random | FILE | timm:NAME; None: no check);
    ``grouped``: every pending run trained as one grouped network (None: on CUDA, and on the CPU a grid's
    combinations of each seed). ``train_blocks`` k >= 1: mode Tk, the encoder's last k blocks trained from the
    store's cached tokens (0: mode C); ``lora_rank``/``lora_alpha``: LoRA adapters on them instead.
    ``selection``: a label-selection strategy (`featcache.selection.STRATEGIES`) that chooses each seed's training
    images, its randomness the seed; ``selection_file``: a file of ids whose first ``size`` every seed trains on
    (None for both: the seeded subsets, no selection recorded).
    """

    store: str
    out: Path
    size: int
    seeds: tuple[int, ...] = (0, 1, 2)
    augment: str = "exact"
    decoder: str = "sd"
    epochs: int | None = None
    batch_size: int | None = None
    val_size: int | None = None
    lrs: tuple[float, ...] = (2e-4,)
    weight_decays: tuple[float, ...] = (1e-4,)
    eval_size: str = "224"
    layers: tuple[int, ...] | None = None
    encoder: str | None = None
    grouped: bool | None = None
    train_blocks: int = 0
    lora_rank: int | None = None
    lora_alpha: float | None = None
    selection: str | None = None
    selection_file: Path | None = None

    @property
    def grid(self) -> bool:
        return len(self.lrs) > 1 or len(self.weight_decays) > 1

    @property
    def mode(self) -> str:
        """``C``, or ``Tk`` with ``train_blocks`` k."""
        return f"T{self.train_blocks}" if self.train_blocks else "C"

    @property
    def selection_label(self) -> str | None:
        """The label selection asked for: a strategy, ``file`` (``selection_file``), or None (random's subsets,
        nothing recorded)."""
        return "file" if self.selection_file is not None else self.selection

    def keys(self) -> list[RunKey]:
        """Every run: combination by combination (learning rate, then weight decay), seeds within."""
        return [
            RunKey(self.mode, self.size, seed, lr, wd)
            for lr in self.lrs
            for wd in self.weight_decays
            for seed in self.seeds
        ]

    def run_config(
        self, key: RunKey, val_size: int | None = None, *, train_ids: tuple[str, ...] | None = None
    ) -> TrainConfig:
        """The `TrainConfig` of one run (``val_size``: the plan's, once resolved; ``train_ids``: its selection's)."""
        return TrainConfig(
            size=self.size,
            seed=key.seed,
            augment=self.augment,
            decoder=self.decoder,
            epochs=self.epochs,
            batch_size=self.batch_size,
            val_size=self.val_size if val_size is None else val_size,
            lr=key.lr,
            weight_decay=key.weight_decay,
            eval_size=self.eval_size,
            layers=self.layers,
            train_blocks=self.train_blocks,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            train_ids=train_ids,
        )

    def validate(self) -> None:
        check_optimiser(self.lrs, self.weight_decays)
        self.run_config(self.keys()[0]).validate()
        if self.train_blocks and self.grouped:
            raise OptionError(
                "--grouped trains decoders alone as one grouped network; a --train-blocks run trains encoder blocks "
                "too, one run at a time: drop --grouped"
            )
        if self.selection is not None:
            check_choice("--selection", self.selection, STRATEGIES)
            if self.selection_file is not None:
                raise OptionError("give --selection or --selection-file, not both")


@dataclass
class CompareConfig:
    """What ``featcache compare-e2e`` takes: every mode of ``modes`` at every size and seed, on the same subsets.

    ``encoder``: the store's encoder (None: rebuilt from its record); ``e_init``: where E and FI start (None: the
    weights the store's encoder started from). ``lrs``: SGD learning rates; the ``grid_modes`` train at every one,
    the others at the first. None epochs/batch/val follow the study's protocol per size; ``layers``: the stored
    blocks every mode reads (None: all; Tk and Pk read the encoder's final output). ``overwrite``: replace an
    earlier sweep of another configuration in ``out`` (else refused; the same configuration resumes);
    ``study_lines``: the study's published figures in the report whatever the store (by default only in the
    study's setting). ``lora_rank``/``lora_alpha``: LoRA adapters on the trained blocks of the Tk and Pk modes.
    ``selections``: label-selection strategies whose chosen training images every mode, size and seed also trains
    on, beside random's (`selection_labels`); ``selection_file``: a file of ids, size N its first N, compared as
    ``file``.
    """

    store: str
    out: Path
    encoder: str | None = None
    e_init: str | None = None
    sizes: tuple[int, ...] = (2000, 160, 80, 40, 20, 10)
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("E", "Es", "F", "FI", "C")
    epochs: int | None = None
    batch_size: int | None = None
    val_size: int | None = None
    lrs: tuple[float, ...] = (2e-4,)
    augment: str = "exact"
    layers: tuple[int, ...] | None = None
    grid_modes: tuple[str, ...] = ("C",)
    overwrite: bool = False
    study_lines: bool = False
    lora_rank: int | None = None
    lora_alpha: float | None = None
    selections: tuple[str, ...] = ("random",)
    selection_file: Path | None = None

    @property
    def selection_labels(self) -> tuple[str, ...]:
        """The label selections compared: ``random`` first (the baseline, added when not named), the strategies
        of ``selections``, then ``file`` for a ``selection_file``."""
        others = tuple(s for s in self.selections if s != "random")
        return ("random", *others, *(("file",) if self.selection_file is not None else ()))

    @property
    def compares_selections(self) -> bool:
        """Whether the sweep compares label selections (its runs then record theirs, in folders per selection)."""
        return self.selection_labels != ("random",)

    def mode_lrs(self, mode: str) -> tuple[float, ...]:
        """The learning rates ``mode`` trains at: every one for a grid mode, else the first."""
        return self.lrs if mode in self.grid_modes else self.lrs[:1]

    def is_grid(self, mode: str) -> bool:
        return len(self.mode_lrs(mode)) > 1

    def validate(self) -> None:
        options = f"--modes {','.join(self.modes)} --grid-modes {','.join(self.grid_modes)}"
        if not self.modes:
            raise OptionError(f"{options}: give at least one mode")
        try:
            blocks = [parse_mode(m)[1] for m in (*self.modes, *self.grid_modes)]
        except OptionError as exc:
            raise OptionError(f"{options}: {exc}") from None
        check_lora(self.lora_rank, self.lora_alpha, trains_blocks=any(blocks))
        if not self.sizes or min(self.sizes) < 1:
            raise OptionError(f"--sizes {self.sizes} must be positive training-set sizes")
        check_optimiser(self.lrs, (1e-4,))
        unknown = [s for s in self.selections if s not in STRATEGIES]
        if unknown or not self.selections:
            raise OptionError(f"--selections {','.join(self.selections)}: choose from {', '.join(STRATEGIES)}")
