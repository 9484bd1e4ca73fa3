"""Shared fixtures and helpers: a tiny synthetic ISIC 2017 dataset, its stores, a runner for the command line,
quick training settings, a run that SIGKILLs itself, mask writers and store comparisons."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """12 train / 6 val / 6 test procedural images at 48x64, written once per session."""
    from featcache.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "isic"
    synthesize(root, n_train=12, n_val=6, n_test=6, image_size=(48, 64), seed=0)
    return root


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m featcache ARGS`` in a fresh process; returns code, stdout and stderr.

    Its tables are laid out 200 columns wide, so that what a test looks for is not cut or wrapped.
    """
    return subprocess.run(
        [sys.executable, "-m", "featcache", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def cli():
    return run_cli


def run_torchrun(*args: object, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m featcache --device cpu ARGS`` as two CPU ranks under torchrun, one thread each; returns code,
    stdout and stderr."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "featcache",
        "--device",
        "cpu",
        *map(str, args),
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout, check=False
    )


def table_rows(text: str) -> list[list[str]]:
    """The cells, stripped, of each body row of the tables `run_cli` printed in ``text`` (header rows left out)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.lstrip().startswith("│")
    ]


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def store_suffix(request) -> str:
    """Every store test runs on both backends."""
    return request.param


#: `extract_config`'s settings as `featcache extract` options.
MICRO_EXTRACT = (
    "--encoder random --arch vit_micro --image-size 64 --views flips --batch-size 3 --shard-size 4 --workers 0".split()
)
#: A small six-image, two-seed train-decoder run on `micro_store`, as command-line options.
SMALL_SWEEP = "--size 6 --seeds 0,1 --epochs 3 --batch-size 3 --val-size 3".split()


def extract_config(data: Path, out: Path | str, **overrides):
    """An ExtractConfig for the micro ViT at 64 px, small blocks so resume has something to do."""
    from featcache.extract import ExtractConfig

    options = dict(
        encoder="random",
        arch="vit_micro",
        image_size=64,
        views="flips",
        batch_size=3,
        shard_size=4,
        workers=0,
        device="cpu",
    )
    options.update(overrides)
    return ExtractConfig(data=data, out=str(out), **options)


@pytest.fixture(scope="session")
def micro_store(synth_root, tmp_path_factory) -> Path:
    """A complete float32 Zarr store (flip views) of `synth_root`, extracted once per session."""
    from featcache.extract import extract

    out = tmp_path_factory.mktemp("store") / "micro.zarr"
    extract(extract_config(synth_root, out, dtype="float32"), progress=False)
    return out


@pytest.fixture(scope="session")
def clean_stores(synth_root, tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted `extract_config` extraction of `synth_root` per backend (".zarr", ".h5"), written once per
    session, for interrupted or damaged stores to be compared with; tests copy one before changing anything."""
    from featcache.extract import extract

    folder = tmp_path_factory.mktemp("clean")
    stores = {suffix: folder / f"clean{suffix}" for suffix in (".zarr", ".h5")}
    for out in stores.values():
        extract(extract_config(synth_root, out), progress=False)
    return stores


def copy_zarr_arrays(source: Path, target: Path) -> dict[str, zarr.Array]:
    """Copy the Zarr store ``source`` to ``target`` and return its arrays by name, open for writing, to break on
    purpose.

    They store every chunk written, even one holding only the fill value, as extract does: by zarr's default such a
    chunk is left out, and the store reads as damaged (chunks missing).
    """
    shutil.copytree(source, target)
    group = zarr.open_group(target, mode="r+")
    return {name: array.with_config({"write_empty_chunks": True}) for name, array in group.arrays()}


STORE_ARRAYS = ("ids", "split", "orig_hw", "images", "masks", "features", "written")


def assert_same_store(a: Path | str, b: Path | str) -> None:
    """Both stores are complete and every array of theirs holds the same values."""
    from featcache.store import FeatureStore

    with FeatureStore.open(a) as left, FeatureStore.open(b) as right:
        assert left.meta["complete"] and right.meta["complete"]
        for name in STORE_ARRAYS:
            assert np.array_equal(left.read(name), right.read(name)), name


def quick_train(**overrides):
    """A TrainConfig small enough for `micro_store`: 8 training images, 3 epochs, batches of 4, 4 validation
    images; ``overrides`` replace any field."""
    from featcache.train import TrainConfig

    return TrainConfig(**{"size": 8, "epochs": 3, "batch_size": 4, "val_size": 4, **overrides})


def quick_pretrain(data: Path | str, out: Path | str, **overrides):
    """A PretrainConfig for 3 epochs of the micro ViT at 32 px from random weights, on the CPU, writing ``out``.

    lr 6e-3 makes its validation loss non-monotone on `synth_root`, so the kept epoch is usually not the last.
    """
    from featcache.pretrain import PretrainConfig

    options = {
        "arch": "vit_micro",
        "init": "random",
        "epochs": 3,
        "batch_size": 4,
        "lr": 6e-3,
        "image_size": 32,
        "workers": 0,
        "device": "cpu",
    }
    return PretrainConfig(data=data, out=out, **{**options, **overrides})


# Runs before the body of `run_then_sigkill`'s script.
KILL_PRELUDE = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_after_saves(n: int) -> None:
    from featcache.resume import Checkpointer

    save, writes = Checkpointer.save, []

    def save_then_die(self, state):
        save(self, state)
        writes.append(1)
        if len(writes) == n:
            die()

    Checkpointer.save = save_then_die
"""


def run_then_sigkill(body: str, after_saves: int | None = None) -> subprocess.CompletedProcess:
    """Run the Python statements ``body`` in a fresh process that SIGKILLs itself mid-run, as a crash, the OOM
    killer or a pulled plug ends a run: no handler, no clean-up.

    ``body`` may call ``die()`` where it should end; with ``after_saves`` N the process dies right after its Nth
    resume-state write (`featcache.resume.Checkpointer.save`). ``from conftest import ...`` works in ``body``.
    Fails the test unless the process ended by SIGKILL; returns it for its output.
    """
    trigger = f"die_after_saves({after_saves})\n" if after_saves is not None else ""
    script = KILL_PRELUDE + trigger + textwrap.dedent(body)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return killed


def one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 1) -> str:
    """The one ``error:`` line of a command that failed with exit ``code`` (1 bad input, 2 an impossible option
    value), checked to hold every fragment and no traceback."""
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def lesion_mask(width: int, height: int) -> np.ndarray:
    """uint8 [height, width], 0/255: a lesion rectangle over the middle half of each side."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
    return pixels


def write_mask(path: Path, pixels: np.ndarray, mode: str | None = None) -> None:
    """Save [H, W] gray levels (uint8, or uint16 for a 16-bit PNG) as an image file, its folder made first;
    ``mode`` converts it (``"RGB"``: the gray replicated to three channels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path)


def rewrite_masks_as_0_1(masks: Iterable[Path]) -> None:
    """Rewrite each 0/255 mask file in place as 8-bit gray 0/1 (lesion = 1), as some datasets store them."""
    for mask in masks:
        write_mask(mask, (np.asarray(Image.open(mask)) > 127).astype(np.uint8))
