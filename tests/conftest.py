"""Shared fixtures: a tiny synthetic ISIC 2017 dataset and a runner for the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    return subprocess.run([sys.executable, "-m", "featcache", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def store_suffix(request) -> str:
    """Every store test runs on both backends."""
    return request.param


def extract_config(data: Path, out: Path | str, **overrides):
    """An ExtractConfig for the micro ViT at 64 px, small blocks so resume has something to do."""
    from featcache.extract import ExtractConfig

    options = dict(encoder="random", arch="vit_micro", image_size=64, views="flips", batch_size=3,
                   shard_size=4, workers=0, device="cpu")
    options.update(overrides)
    return ExtractConfig(data=data, out=str(out), **options)


@pytest.fixture(scope="session")
def micro_store(synth_root, tmp_path_factory) -> Path:
    """A complete float32 Zarr store (flip views) of `synth_root`, extracted once per session."""
    from featcache.extract import extract

    out = tmp_path_factory.mktemp("store") / "micro.zarr"
    extract(extract_config(synth_root, out, dtype="float32"), progress=False)
    return out
