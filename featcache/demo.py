"""The whole pipeline on a built-in default, sized for a 2-core CPU in a few minutes.

synth (or ``--data``) -> denoising pretraining of a small ViT -> extraction with flip views ->
compare-e2e (E, F, C) -> report. Every shortening of the study's settings is a field of
`DemoConfig` and is printed and written into the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from featcache.data import SplitConfig
from featcache.experiment import CompareConfig, Comparison, compare_e2e
from featcache.extract import ExtractConfig, extract
from featcache.pretrain import PretrainConfig, pretrain
from featcache.runtime import err_console
from featcache.synth import synthesize


@dataclass
class DemoConfig:
    """The demo's settings and how they depart from the study's (ViT-B/16, 224 px, 32 + 100–1200 epochs)."""

    out: Path = Path("featcache-demo")
    data: Path | None = None
    arch: str = "vit_mini"
    image_size: int = 64
    init: str = "random"
    n_train: int = 48
    n_val: int = 12
    n_test: int = 16
    pretrain_epochs: int = 4
    pretrain_lr: float = 1e-3
    pretrain_batch: int = 16
    sizes: tuple[int, ...] = (40, 20, 10)
    seeds: tuple[int, ...] = (0, 1)
    modes: tuple[str, ...] = ("E", "F", "C")
    epochs: int | None = 40
    lr: float = 0.05
    device: str = "auto"
    workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)

    def shortenings(self) -> str:
        return (
            f"{self.arch} at {self.image_size} px (study: vit_b_16 at 224 px); "
            f"pretraining {self.pretrain_epochs} epochs from {self.init} weights at Adam lr {self.pretrain_lr} "
            "(study: 32 epochs from ImageNet at 2e-5); "
            f"{self.epochs or 'the protocol’s'} epochs per run at SGD lr {self.lr} (study: 100–1200 epochs at 2e-4); "
            f"sizes {', '.join(map(str, self.sizes))}; seeds {', '.join(map(str, self.seeds))}"
        )


@dataclass
class DemoResult:
    comparison: Comparison
    seconds: float
    steps: dict[str, float]


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run every stage into ``cfg.out``; returns the comparison and the seconds of each stage."""
    started = time.perf_counter()
    steps: dict[str, float] = {}
    out = cfg.out
    err_console.print(f"featcache demo into {out}: {cfg.shortenings()}")

    t = time.perf_counter()
    data = cfg.data
    if data is None:
        data = out / "data"
        synthesize(data, n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, seed=0, progress=True)
    steps["synth"] = time.perf_counter() - t

    t = time.perf_counter()
    encoder_path = out / "encoder.pt"
    pretrain(
        PretrainConfig(
            data=data,
            out=encoder_path,
            arch=cfg.arch,
            init=cfg.init,
            epochs=cfg.pretrain_epochs,
            batch_size=cfg.pretrain_batch,
            lr=cfg.pretrain_lr,
            image_size=cfg.image_size,
            workers=cfg.workers,
            device=cfg.device,
            split=cfg.split,
        )
    )
    steps["pretrain"] = time.perf_counter() - t

    t = time.perf_counter()
    store = out / "store.zarr"
    extract(
        ExtractConfig(
            data=data,
            out=str(store),
            encoder=str(encoder_path),
            arch=cfg.arch,
            image_size=cfg.image_size,
            views="flips",
            dtype="float16",
            batch_size=32,
            workers=cfg.workers,
            device=cfg.device,
            split=cfg.split,
            overwrite=True,
        )
    )
    steps["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    comparison = compare_e2e(
        CompareConfig(
            store=str(store),
            out=out / "report",
            sizes=cfg.sizes,
            seeds=cfg.seeds,
            modes=cfg.modes,
            epochs=cfg.epochs,
            lr=cfg.lr,
            device=cfg.device,
        )
    )
    steps["compare-e2e"] = time.perf_counter() - t
    return DemoResult(comparison, time.perf_counter() - started, steps)
