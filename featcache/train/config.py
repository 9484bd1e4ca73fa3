"""A run's configuration: `TrainConfig`, one decoder training run (the study's protocol where left None)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from featcache.core.errors import OptionError, check_choice
from featcache.models.decoders import DECODERS
from featcache.store.feature_store import FeatureStore
from featcache.train.modes import MODES
from featcache.train.protocol import Plan, plan_run

AUGMENTS = ("exact", "feature-flip", "none")
EVAL_SIZES = ("224", "original")


@dataclass
class TrainConfig:
    """One decoder training run. None means: the study's protocol for ``size`` (see `featcache.train.protocol`)."""

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

    def validate(self) -> None:
        """Refuse option values that can never be valid (a usage error)."""
        check_choice("--augment", self.augment, AUGMENTS)
        if self.decoder not in DECODERS:
            raise OptionError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        check_choice("--eval-size", self.eval_size, EVAL_SIZES)
        check_optimiser((self.lr,), (self.weight_decay,))

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


@dataclass(frozen=True)
class RunKey:
    """One run of a sweep: its mode, training-set size, seed, learning rate and weight decay."""

    mode: str
    size: int
    seed: int
    lr: float
    weight_decay: float


@dataclass
class SweepConfig:
    """What ``featcache train-decoder`` takes: C-mode runs of one ``size`` from the ``store``, one per seed, or per
    seed and (learning rate, weight decay) of a grid (``lrs`` x ``weight_decays`` with several values).

    None epochs/batch/val follow the study's protocol for ``size``; ``layers``: the stored blocks read (None:
    all); ``encoder``: the encoder the store must hold (imagenet | random | FILE | timm:NAME; None: no check);
    ``grouped``: every pending run trained as one grouped network (None: on CUDA, and on the CPU a grid's
    combinations of each seed).
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

    @property
    def grid(self) -> bool:
        return len(self.lrs) > 1 or len(self.weight_decays) > 1

    def keys(self) -> list[RunKey]:
        """Every run: combination by combination (learning rate, then weight decay), seeds within."""
        return [
            RunKey("C", self.size, seed, lr, wd) for lr in self.lrs for wd in self.weight_decays for seed in self.seeds
        ]

    def run_config(self, key: RunKey, val_size: int | None = None) -> TrainConfig:
        """The `TrainConfig` of one run (``val_size``: the plan's, once resolved)."""
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
        )

    def validate(self) -> None:
        check_optimiser(self.lrs, self.weight_decays)
        self.run_config(self.keys()[0]).validate()


@dataclass
class CompareConfig:
    """What ``featcache compare-e2e`` takes: every mode of ``modes`` at every size and seed, on the same subsets.

    ``encoder``: the store's encoder (None: rebuilt from its record); ``e_init``: where E and FI start (None: the
    weights the store's encoder started from). ``lrs``: SGD learning rates; the ``grid_modes`` train at every one,
    the others at the first. None epochs/batch/val follow the study's protocol per size; ``layers``: the stored
    blocks every mode reads (None: all). ``overwrite``: replace an earlier sweep of another configuration in
    ``out`` (else refused; the same configuration resumes); ``study_lines``: the study's published figures in the
    report whatever the store (by default only in the study's setting).
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

    def mode_lrs(self, mode: str) -> tuple[float, ...]:
        """The learning rates ``mode`` trains at: every one for a grid mode, else the first."""
        return self.lrs if mode in self.grid_modes else self.lrs[:1]

    def is_grid(self, mode: str) -> bool:
        return len(self.mode_lrs(mode)) > 1

    def validate(self) -> None:
        unknown = [m for m in (*self.modes, *self.grid_modes) if m not in MODES]
        if unknown or not self.modes:
            raise OptionError(
                f"--modes {','.join(self.modes)} --grid-modes {','.join(self.grid_modes)}: "
                f"choose from {', '.join(MODES)}"
            )
        if not self.sizes or min(self.sizes) < 1:
            raise OptionError(f"--sizes {self.sizes} must be positive training-set sizes")
        check_optimiser(self.lrs, (1e-4,))
