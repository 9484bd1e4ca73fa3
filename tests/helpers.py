"""Helpers shared by the tests: the CPU context, a runner for the command line and for torchrun, quick configurations
(micro ViT extraction, training, sweeps, pretraining), a run that SIGKILLs itself, mask writers and store
comparisons. Fixtures live in ``tests/conftest.py``."""

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
import torch
import zarr
from PIL import Image

from featcache.core.context import Context


def run_cli(*args: str, cwd: Path | None = None, columns: int = 200) -> subprocess.CompletedProcess:
    """Run ``python -m featcache ARGS`` in a fresh process; returns code, stdout and stderr.

    Its tables are laid out ``columns`` wide: by default 200, so that what a test looks for is not cut or wrapped.
    """
    return subprocess.run(
        [sys.executable, "-m", "featcache", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def run_main(capsys, *args: object) -> subprocess.CompletedProcess:
    """`featcache.cli.main` with ``args`` in this process (no interpreter to start: fast), returning its exit code,
    stdout and stderr as `run_cli` does; ``capsys`` is pytest's fixture."""
    from featcache.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    out = capsys.readouterr()
    return subprocess.CompletedProcess([str(a) for a in args], code, out.out, out.err)


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


#: `extract_config`'s settings as `featcache extract` options.
MICRO_EXTRACT = (
    "--encoder random --arch vit_micro --image-size 64 --views flips --batch-size 3 --shard-size 4 --workers 0".split()
)
#: A small six-image, two-seed train-decoder run on `micro_store`, as command-line options.
SMALL_SWEEP = "--size 6 --seeds 0,1 --epochs 3 --batch-size 3 --val-size 3".split()


#: The tests' execution context: the CPU, no progress bars, resume state after every minute.
CPU = Context(device=torch.device("cpu"), progress=False)


def extract_config(data: Path, out: Path | str, **overrides):
    """An ExtractConfig for the micro ViT at 64 px, small blocks so resume has something to do."""
    from featcache.store import ExtractConfig

    options = dict(
        encoder="random",
        arch="vit_micro",
        image_size=64,
        views="flips",
        batch_size=3,
        shard_size=4,
        workers=0,
    )
    options.update(overrides)
    return ExtractConfig(data=data, out=str(out), **options)


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
        assert left.record.complete and right.record.complete
        for name in STORE_ARRAYS:
            assert np.array_equal(left.read(name), right.read(name)), name


def tiny_identity(dtype: str = "float16"):
    """A complete `StoreIdentity` for hand-made stores: a random vit_micro (its hash made up), 32 px, flip views."""
    from featcache.models import EncoderRecord, WeightsSource
    from featcache.store.schema import DatasetRecord, Preprocessing, StoreIdentity

    return StoreIdentity(
        encoder=EncoderRecord(
            arch="vit_micro",
            config={"num_layers": 2},
            normalisation={"mean": [0.5] * 3, "std": [0.25] * 3},
            source=WeightsSource("random", seed=0),
            weights_sha256="a" * 64,
        ),
        preprocessing=Preprocessing(size=32, image_interpolation="-", mask_interpolation="-", normalisation="-"),
        dataset=DatasetRecord(layout="folders", counts={"train": 3, "val": 1, "test": 1}, fingerprint="f"),
        views="flips",
        dtype=dtype,
    )


def make_store(path, dtype: str = "float16", n: int = 5, shard_size: int = 2, *, identity=None, splits=None):
    """A new, empty store (open for writing) of ``n`` samples ``ISIC_0000000``... of ``identity`` (`tiny_identity`
    of ``dtype``): 8 channels on a 2x2 grid, blocks of ``shard_size``; ``splits`` per sample (default: three train,
    ``n - 4`` val, one test)."""
    from featcache.store import FeatureStore

    return FeatureStore.create(
        path,
        identity=identity or tiny_identity(dtype=dtype),
        ids=[f"ISIC_{i:07d}" for i in range(n)],
        splits=splits or ["train"] * 3 + ["val"] * (n - 4) + ["test"],
        orig_hw=np.arange(2 * n).reshape(n, 2),
        width=8,
        grid=(2, 2),
        shard_size=shard_size,
    )


def fill_store(store, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Write every block of a `make_store` store with seeded random features, images and masks (0/1: the red
    channel above 127); returns them (features [n, V, 8, 2, 2] float32, images [n, 3, S, S], masks [n, S, S])."""
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(store.n, len(store.view_names), 8, 2, 2, generator=gen)
    size = store.image_size
    images = np.random.default_rng(seed).integers(0, 256, (store.n, 3, size, size), dtype=np.uint8)
    masks = (images[:, 0] > 127).astype(np.uint8)
    for start, stop in store.blocks():
        store.write_block(start, images[start:stop], masks[start:stop], features=feats[start:stop])
    return feats, images, masks


def flip_chunk_byte(path, array: str, row: int) -> None:
    """Change one bit in the middle of the data of the chunk (Zarr: shard) holding ``row``, the store closed."""
    from featcache.store import FeatureStore

    if str(path).endswith(".zarr"):
        with FeatureStore.open(path, allow_incomplete=True) as store:
            ndim, block = store.backend[array].ndim, store.shard_size
        chunk = path / array / "c" / str(row // block) / "/".join(["0"] * (ndim - 1))
        data = bytearray(chunk.read_bytes())
        data[(len(data) - (16 * block + 4 if ndim > 1 else 0)) // 2] ^= 0x10  # before a shard's index
        chunk.write_bytes(bytes(data))
        return
    import h5py

    with h5py.File(path, "r") as f:
        dataset = f[array]
        info = dataset.id.get_chunk_info_by_coord((row - row % dataset.chunks[0], *[0] * (dataset.ndim - 1)))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte ^ 0x10]))


def quick_train(**overrides):
    """A TrainConfig small enough for `micro_store`: 8 training images, 3 epochs, batches of 4, 4 validation
    images; ``overrides`` replace any field."""
    from featcache.train import TrainConfig

    return TrainConfig(**{"size": 8, "epochs": 3, "batch_size": 4, "val_size": 4, **overrides})


def quick_sweep(store: Path | str, out: Path, **overrides):
    """A SweepConfig small enough for `micro_store`: size 8, seeds 0 and 1, 3 epochs, batches of 4, 4 validation
    images; ``overrides`` replace any field."""
    from featcache.train import SweepConfig

    options = {"size": 8, "seeds": (0, 1), "epochs": 3, "batch_size": 4, "val_size": 4}
    return SweepConfig(store=str(store), out=Path(out), **{**options, **overrides})


def quick_compare(store: Path | str, out: Path, **overrides):
    """A CompareConfig small enough for `micro_store`: sizes 8 and 4, seeds 0 and 1, modes F and C, 2 epochs,
    batches of 4, 3 validation images, lr 0.01; ``overrides`` replace any field."""
    from featcache.train import CompareConfig

    options = {
        "sizes": (8, 4),
        "seeds": (0, 1),
        "modes": ("F", "C"),
        "epochs": 2,
        "batch_size": 4,
        "val_size": 3,
        "lrs": (0.01,),
    }
    return CompareConfig(store=str(store), out=Path(out), **{**options, **overrides})


def quick_pretrain(data: Path | str, out: Path | str, **overrides):
    """A PretrainConfig for 3 epochs of the micro ViT at 32 px from random weights, on the CPU, writing ``out``.

    lr 6e-3 makes its validation loss non-monotone on `synth_root`, so the kept epoch is usually not the last.
    """
    from featcache.train import PretrainConfig

    options = {
        "arch": "vit_micro",
        "init": "random",
        "epochs": 3,
        "batch_size": 4,
        "lr": 6e-3,
        "image_size": 32,
        "workers": 0,
    }
    return PretrainConfig(data=data, out=out, **{**options, **overrides})


# Runs before the body of `run_then_sigkill`'s script.
KILL_PRELUDE = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_after_saves(n: int) -> None:
    from featcache.train.resume import Checkpointer

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
    resume-state write (`featcache.train.resume.Checkpointer.save`). ``from tests.helpers import ...`` works in
    ``body``.
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


def hand_made_results(*, mode: str = "C", size: int = 8, seed: int = 0, iou: float = 0.5, **entries):
    """A `RunResults` read from a small results.json: the test metrics derived from ``iou`` (dice ``iou + 0.1``,
    sensitivity ``iou + 0.2``, specificity 0.9, accuracy 0.8, thresholded Jaccard ``iou - 0.1``), 10 epochs;
    ``entries`` replace entries of the JSON (``optimiser={"lr": ...}``, ``best_val_loss``, ``train_seconds``, ...)."""
    from featcache.results.records import RunResults

    test = {
        "iou": iou,
        "dice": iou + 0.1,
        "sensitivity": iou + 0.2,
        "specificity": 0.9,
        "accuracy": 0.8,
        "thresholded_jaccard": iou - 0.1,
    }
    document = {
        "mode": mode,
        "size": size,
        "seed": seed,
        "val_size": 4,
        "epochs": 10,
        "batch_size": 4,
        "best_epoch": 5,
        "train_seconds": 2.0,
        "total_seconds": 3.0,
        "augment": "exact",
        "device": "cpu",
        "test": test,
        **entries,
    }
    return RunResults.from_json(document)


#: The entries every run's results.json holds, and its test metrics.
RESULT_KEYS = {
    "cuda_graphs",
    "mode",
    "size",
    "seed",
    "val_size",
    "epochs",
    "batch_size",
    "best_epoch",
    "train_seconds",
    "total_seconds",
    "augment",
    "device",
    "test",
    "history",
}
TEST_KEYS = {"iou", "dice", "sensitivity", "specificity", "accuracy", "thresholded_jaccard"}
