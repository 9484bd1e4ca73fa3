"""featcache.core.ranks: who this process is under torchrun, and the collectives (no-ops for one process)."""

from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

from featcache.core import ranks
from featcache.core.errors import FeatcacheError
from featcache.core.ranks import COLLECTIVE_TIMEOUT, Distributed


@pytest.fixture
def torchrun(monkeypatch):
    """The environment torchrun gives rank 1 of 2, with the process group's start recorded instead of made."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    started, threads = [], []
    monkeypatch.setattr(ranks.tdist, "is_initialized", lambda: False)
    monkeypatch.setattr(ranks.tdist, "init_process_group", lambda backend, timeout: started.append((backend, timeout)))
    monkeypatch.setattr(ranks.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    return started, threads


def test_without_torchrun_one_process_on_the_chosen_device(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = Distributed.from_env("cpu")
    assert (dist.rank, dist.world_size, dist.device, dist.initialised) == (0, 1, torch.device("cpu"), False)
    assert dist.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert Distributed.from_env("cpu") == dist


def test_collectives_of_one_process_are_its_own_object():
    dist = Distributed()
    assert dist.gather_objects({"n": 3}) == [{"n": 3}]
    assert dist.broadcast_object([1, 2]) == [1, 2]
    dist.close()
    assert not dist.initialised


def test_a_cpu_rank_joins_gloo_with_a_day_long_timeout_and_its_share_of_the_cores(torchrun):
    started, threads = torchrun
    dist = Distributed.from_env("cpu")
    assert (dist.rank, dist.world_size, dist.device, dist.initialised) == (1, 2, torch.device("cpu"), True)
    assert not dist.is_main
    assert started == [("gloo", COLLECTIVE_TIMEOUT)] and COLLECTIVE_TIMEOUT == timedelta(hours=24)
    assert threads == [8]


def test_a_cuda_rank_takes_the_gpu_of_its_local_rank_and_nccl(torchrun, monkeypatch):
    started, _ = torchrun
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    dist = Distributed.from_env("auto")
    assert dist.device == torch.device("cuda", 1) and chosen == [torch.device("cuda", 1)]
    assert started == [("nccl", COLLECTIVE_TIMEOUT)]


def test_a_local_rank_without_a_gpu_of_its_own_names_the_fix(torchrun, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        FeatcacheError,
        match=r"^torchrun local rank 1 has no GPU of its own \(1 visible\); use --nproc-per-node 1 or fewer$",
    ):
        Distributed.from_env("cuda")
    assert torchrun[0] == []  # refused before joining any process group


def test_gather_and_broadcast_through_a_real_process_group(tmp_path):
    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    dist = Distributed(0, 1, torch.device("cpu"), True)
    try:
        assert dist.gather_objects(("ids", 7)) == [("ids", 7)]
        assert dist.broadcast_object({"refusal": ""}) == {"refusal": ""}
    finally:
        dist.close()
    assert not dist.initialised and not tdist.is_initialized()
