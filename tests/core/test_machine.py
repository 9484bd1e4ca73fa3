"""featcache.core.machine: the machine and its load, as a sweep records them."""

import torch

from featcache.core.machine import Environment, Machine, load_average


def machine(gpu=None):
    return Machine(cpu="Test CPU", cpu_count=2, threads=2, gpu=gpu, system="Linux", torch_version="2")


def test_other_load_is_load_before_the_sweep_or_beyond_its_own_threads_at_the_end():
    def seen(start, end, gpu=None):
        return Environment(machine=machine(gpu), device="cpu", load_start=[start] * 3, load_end=[end] * 3).other_load

    assert not seen(0.2, 2.5)  # the sweep's own two threads
    assert seen(1.2, 2.5)  # busy before it started
    assert seen(0.2, 3.5)  # more than its two threads and one to spare at the end
    assert seen(0.2, 2.5, gpu="H100")  # a GPU sweep keeps one CPU busy
    assert Environment(machine=machine(), device="cpu").other_load is None  # no load average: unknown


def test_the_environment_here_is_json_and_reads_back():
    here = Environment.start(torch.device("cpu")).finish()
    assert Environment.from_json(here.to_json()) == here
    assert here.machine.cpu_count >= 1 and here.machine.gpu is None and here.device == "cpu"
    assert len(here.load_start) == len(here.load_end) == len(load_average()) == 3  # 1, 5 and 15 minutes (Linux)
    assert "logical cores" in here.machine.describe()
