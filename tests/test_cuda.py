"""The CUDA paths (bf16 autocast, channels_last, pinned memory, GPU-resident store): skipped without a GPU."""

import numpy as np
import pytest
import torch

from conftest import extract_config
from featcache.extract import extract
from featcache.store import FeatureStore, placement
from featcache.train import TrainConfig, train_from_store

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_extract_on_cuda_matches_cpu(synth_root, micro_store, tmp_path):
    out = tmp_path / "cuda.zarr"
    extract(extract_config(synth_root, out, dtype="float32", device="cuda"), progress=False)
    with FeatureStore.open(out) as gpu, FeatureStore.open(micro_store) as cpu:
        assert gpu.meta["extraction"]["device"].startswith("cuda")
        a, b = gpu.features(np.arange(gpu.n)), cpu.features(np.arange(cpu.n))
        # bf16 autocast on the GPU: close to the float32 CPU features, not equal.
        cos = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min()
        assert cos > 0.99


def test_store_split_is_resident_on_the_gpu(micro_store):
    with FeatureStore.open(micro_store) as store:
        split = store.load_split("train", device="cuda")
        assert split.features.is_cuda and split.masks.is_cuda
    assert placement("cuda", 1 << 60).type == "cpu"  # too large: stays on the CPU


def test_train_decoder_on_cuda(micro_store):
    with FeatureStore.open(micro_store) as store:
        run = train_from_store(store, TrainConfig(size=8, epochs=3, batch_size=4, val_size=4), torch.device("cuda"))
    assert run.results["device"].startswith("cuda") and 0 <= run.results["test"]["iou"] <= 1
