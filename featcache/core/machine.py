"""The machine a sweep ran on and the load it saw: what makes its timings mean something.

Timings depend on the machine and on whatever else runs on it; a report states both. The load average (the
number of processes running or waiting for a CPU, averaged over 1, 5 and 15 minutes) is read at the start and
at the end of a sweep.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from featcache.core.json_record import JsonRecord


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else `platform.processor`), or ``unknown CPU``."""
    try:
        with open("/proc/cpuinfo", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


@dataclass(kw_only=True)
class Machine(JsonRecord):
    """The CPU's name, its logical cores, torch's CPU threads, the GPU's name (None on the CPU), the OS and
    torch's version."""

    cpu: str
    cpu_count: int
    threads: int
    gpu: str | None = None
    system: str = ""
    torch_version: str = ""
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def here(cls, device: torch.device) -> Machine:
        """This machine, running on ``device``."""
        return cls(
            cpu=cpu_name(),
            cpu_count=os.cpu_count() or 1,
            threads=torch.get_num_threads(),
            gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            system=platform.platform(terse=True),
            torch_version=torch.__version__,
        )

    def describe(self) -> str:
        """``AMD EPYC, 2 logical cores (torch: 2 threads), Linux, torch 2.14`` (and the GPU when there is one)."""
        gpu = f"{self.gpu} GPU; " if self.gpu else ""
        return (
            f"{gpu}{self.cpu}, {self.cpu_count} logical cores (torch: {self.threads} threads), "
            f"{self.system}, torch {self.torch_version}"
        )


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages, or None where the system has none (Windows)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


@dataclass(kw_only=True)
class Environment(JsonRecord):
    """Where a sweep ran: the `Machine`, the device, and the load averages (`load_average`) at its start and end."""

    NESTED: ClassVar = {"machine": Machine}

    machine: Machine
    device: str
    load_start: list[float] | None = None
    load_end: list[float] | None = None
    extra: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def start(cls, device: torch.device) -> Environment:
        """The machine and its load now, as a sweep starts on ``device``."""
        return cls(machine=Machine.here(device), device=str(device), load_start=load_average())

    def finish(self) -> Environment:
        """The load now, as the sweep ends."""
        self.load_end = load_average()
        return self

    @property
    def other_load(self) -> bool | None:
        """Whether work other than the sweep's was seen: a 1-minute load of 1 or more at the start (before the
        sweep ran), or at the end more than the sweep's own share (its CPU threads, or 1 on a GPU) plus 1. None
        when the system gives no load average."""
        if self.load_start is None or self.load_end is None:
            return None
        own = 1 if self.machine.gpu else self.machine.threads
        return self.load_start[0] >= 1.0 or self.load_end[0] > own + 1.0
