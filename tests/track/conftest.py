"""A fake training run for the tracking tests: its outputs (results.json, a figure) and the calls that log it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featcache.track import Run, flatten_params


@dataclass
class FakeRun:
    """Three epochs, the parameters the issue lists, two test metrics; `write` puts its outputs in a folder."""

    params: dict = field(
        default_factory=lambda: {
            "mode": "C",
            "size": 10,
            "seed": 0,
            "lr": 1e-4,
            "weight_decay": 1e-4,
            "layers": (8, 9, 10, 11),
            "encoder": {"arch": "vit_micro", "init": "random"},
            "store_fingerprint": "9f3c0e",
            "featcache_version": "0.1.0",
            "grouped": False,
        }
    )
    history: dict = field(
        default_factory=lambda: {
            1: {"train_loss": 0.93, "val_loss": 1.12, "epoch_seconds": 0.25},
            2: {"train_loss": 0.71, "val_loss": 0.95, "epoch_seconds": 0.24},
            3: {"train_loss": 0.55, "val_loss": 0.81, "epoch_seconds": 0.26},
        }
    )
    test: dict = field(default_factory=lambda: {"test/dice": 0.61, "test/jaccard": 0.48})
    folder: Path = Path("run")

    @property
    def results(self) -> dict:
        return json.loads((self.folder / "results.json").read_text())

    def write(self, folder: Path) -> None:
        """``folder/results.json`` (params, per-epoch history, test metrics) and ``folder/figures/curves.png``
        (12x16 px)."""
        self.folder = folder
        figures = folder / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        pixels = np.zeros((12, 16, 3), np.uint8)
        pixels[:, :8, 0] = 255
        Image.fromarray(pixels).save(figures / "curves.png")
        results = {
            "params": flatten_params(self.params),
            "history": [{"epoch": epoch, **values} for epoch, values in self.history.items()],
            "test": self.test,
        }
        (folder / "results.json").write_text(json.dumps(results))

    def log(self, run: Run) -> None:
        """What training does: every epoch, then the test metrics, the outputs, the end."""
        for epoch, values in self.history.items():
            run.log_epoch(epoch=epoch, metrics=values)
        run.log_metrics(self.test)
        run.log_artifact(self.folder / "results.json")
        run.log_artifact(self.folder / "figures")
        run.end()


@pytest.fixture
def fake_run(tmp_path) -> FakeRun:
    """The fake run, its outputs written in ``tmp_path/run``."""
    fake = FakeRun()
    fake.write(tmp_path / "run")
    return fake
