"""featcache.core.runtime: the device, its precision, seeded module building, placement and the consoles."""

import warnings

import pytest
import torch

from featcache.core import runtime
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.runtime import (
    autocast,
    compute_precision,
    placement,
    resolve_device,
    seeded,
    synchronize,
    wait_for_stream,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine that shows two CUDA devices, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_cuda_when_a_gpu_is_visible_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU and resolve_device() == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == CUDA


def test_a_visible_cuda_device_is_taken_as_named(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == CUDA and resolve_device("cpu") == CPU


def test_a_cuda_index_beyond_the_visible_devices_names_the_ones_there(two_gpus):
    with pytest.raises(FeatcacheError, match=r"^--device cuda:2: only 2 CUDA device\(s\) are visible; use cuda:0..1$"):
        resolve_device("cuda:2")


def test_a_device_of_another_kind_is_a_usage_error(two_gpus):
    with pytest.raises(OptionError, match=r"^--device 'meta' is not one of auto, cpu, cuda, cuda:N$"):
        resolve_device("meta")


def test_synchronize_and_wait_for_stream_wait_on_cuda_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: calls.append(("device", device)))

    class Stream:
        def synchronize(self):
            calls.append(("stream", None))

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: Stream())
    synchronize(CPU)
    wait_for_stream(CPU)
    assert calls == []
    synchronize(CUDA)
    wait_for_stream(CUDA)
    assert calls == [("device", CUDA), ("stream", None)]


def test_autocast_is_off_on_the_cpu_and_bf16_without_a_weight_cache_on_cuda():
    a = torch.randn(4, 4)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ a).dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without a GPU torch warns that CUDA autocast is disabled
        cuda = autocast(CUDA)
    assert cuda.fast_dtype == torch.bfloat16 and cuda._cache_enabled is False
    assert compute_precision(CPU) == "float32" and compute_precision(CUDA) == "bfloat16 autocast"


def test_seeded_draws_the_same_and_leaves_the_global_state_as_it_was():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded(1):
        first = torch.nn.Linear(2, 2).weight.detach().clone()
    assert torch.equal(torch.rand(3), expected)  # the global stream went on as if nothing had drawn from it
    with seeded(1):
        again = torch.nn.Linear(2, 2).weight.detach().clone()
    with seeded(2):
        other = torch.nn.Linear(2, 2).weight.detach().clone()
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_placement_counts_free_and_reusable_cached_memory_with_headroom(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * gib)
    # 10 GiB free + 4 GiB cached and unused = 14 GiB; half kept as headroom: up to 7 GiB goes on the GPU.
    assert placement(CUDA, 7 * gib - 1) == CUDA
    assert placement("cuda", 7 * gib) == CPU
    assert placement(CUDA, 7 * gib, headroom=0.25) == CUDA
    assert placement("cpu", 10**15) == CPU


def test_results_go_to_stdout_and_logs_to_stderr():
    assert runtime.out_console.stderr is False and runtime.err_console.stderr is True


def test_cuda_without_a_visible_gpu_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        FeatcacheError, match=r"^--device cuda:0: no CUDA GPU is visible here; use --device cpu or auto$"
    ):
        resolve_device("cuda:0")
