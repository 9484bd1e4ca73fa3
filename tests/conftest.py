"""Fixtures shared by every test module: a tiny synthetic ISIC 2017 dataset, its stores, a runner for the command
line and both store backends. Helper functions live in `tests.helpers`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CPU, extract_config, run_cli

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """12 train / 6 val / 6 test procedural images at 48x64, written once per session."""
    from featcache.data import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("synth") / "isic"
    synthesize(SynthConfig(root, n_train=12, n_val=6, n_test=6, image_size=(48, 64), seed=0))
    return root


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def store_suffix(request) -> str:
    """Every store test runs on both backends."""
    return request.param


@pytest.fixture(scope="session")
def micro_store(synth_root, tmp_path_factory) -> Path:
    """A complete float32 Zarr store (flip views) of `synth_root`, extracted once per session."""
    from featcache.store.extract import extract

    out = tmp_path_factory.mktemp("store") / "micro.zarr"
    extract(extract_config(synth_root, out, dtype="float32"), ctx=CPU)
    return out


@pytest.fixture(scope="session")
def clean_stores(synth_root, tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted `extract_config` extraction of `synth_root` per backend (".zarr", ".h5"), written once per
    session, for interrupted or damaged stores to be compared with; tests copy one before changing anything."""
    from featcache.store.extract import extract

    folder = tmp_path_factory.mktemp("clean")
    stores = {suffix: folder / f"clean{suffix}" for suffix in (".zarr", ".h5")}
    for out in stores.values():
        extract(extract_config(synth_root, out), ctx=CPU)
    return stores
