"""The whole pipeline on a built-in default, sized for a 2-core CPU in a few minutes.

synth (or ``--data``) -> denoising pretraining of a small ViT -> extraction with flip views ->
compare-e2e (E, F, C) -> report. Every shortening of the study's settings is a field of
`DemoConfig` and is printed and written into the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from featcache.core.context import Context
from featcache.core.runtime import err_console
from featcache.data.layouts import SplitConfig
from featcache.data.synth import SynthConfig, synthesize
from featcache.store.extract import extract
from featcache.store.extract_config import ExtractConfig
from featcache.train.compare import Comparison, compare_e2e
from featcache.train.config import CompareConfig
from featcache.train.pretrain import PretrainConfig, pretrain


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
    workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    tail_tokens: int | None = None  # K: the store also keeps the tokens entering the last K blocks (modes Tk)
    encoder: Path | None = None  # an encoder pretrained with these settings: skips pretraining

    def pretrain_config(self, data: Path, out: Path) -> PretrainConfig:
        """The demo's pretraining of its small ViT on ``data`` into ``out``."""
        return PretrainConfig(
            data=data,
            out=out,
            arch=self.arch,
            init=self.init,
            epochs=self.pretrain_epochs,
            batch_size=self.pretrain_batch,
            lr=self.pretrain_lr,
            image_size=self.image_size,
            workers=self.workers,
            split=self.split,
        )

    def extract_config(self, data: Path, encoder: Path, out: Path) -> ExtractConfig:
        """The demo's extraction with flip views, replacing an earlier demo's store."""
        return ExtractConfig(
            data=data,
            out=str(out),
            encoder=str(encoder),
            arch=self.arch,
            image_size=self.image_size,
            views="flips",
            dtype="float16",
            batch_size=32,
            workers=self.workers,
            split=self.split,
            overwrite=True,
            tail_tokens=self.tail_tokens,
        )

    def compare_config(self, store: Path) -> CompareConfig:
        return CompareConfig(
            store=str(store),
            out=self.out / "report",
            sizes=self.sizes,
            seeds=self.seeds,
            modes=self.modes,
            epochs=self.epochs,
            lrs=(self.lr,),
            overwrite=True,  # a demo run again replaces its earlier report, as its extraction replaces the store
        )

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


def run_demo(cfg: DemoConfig, *, ctx: Context | None = None) -> DemoResult:
    """Run every stage into ``cfg.out``; returns the comparison and the seconds of each stage."""
    ctx = ctx or Context.resolve()
    started = time.perf_counter()
    steps: dict[str, float] = {}
    err_console.print(f"featcache demo into {cfg.out}: {cfg.shortenings()}")
    t = time.perf_counter()
    data = cfg.data
    if data is None:
        data = cfg.out / "data"
        synthesize(SynthConfig(data, cfg.n_train, cfg.n_val, cfg.n_test, seed=0), progress=ctx.progress)
    steps["synth"] = time.perf_counter() - t
    t = time.perf_counter()
    encoder_path = cfg.encoder or cfg.out / "encoder.pt"
    if cfg.encoder is None:
        pretrain(cfg.pretrain_config(data, encoder_path), ctx=ctx)
    steps["pretrain"] = time.perf_counter() - t
    t = time.perf_counter()
    store = cfg.out / "store.zarr"
    extract(cfg.extract_config(data, encoder_path, store), ctx=ctx)
    steps["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    comparison = compare_e2e(cfg.compare_config(store), ctx=ctx)
    steps["compare-e2e"] = time.perf_counter() - t
    return DemoResult(comparison, time.perf_counter() - started, steps)
