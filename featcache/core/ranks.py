"""torchrun support: who this process is, its device, and the few collectives featcache needs.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything is a no-op for one process.
With it, CUDA ranks use NCCL and one GPU each (``LOCAL_RANK``); CPU ranks use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from featcache.core.errors import FeatcacheError
from featcache.core.runtime import resolve_device

COLLECTIVE_TIMEOUT = timedelta(hours=24)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    initialised: bool = False

    @classmethod
    def from_env(cls, device_spec: str = "auto") -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(device=resolve_device(device_spec))
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device_spec != "cpu" and torch.cuda.is_available()
        device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
        if use_cuda:
            if local >= torch.cuda.device_count():
                raise FeatcacheError(
                    f"torchrun local rank {local} has no GPU of its own ({torch.cuda.device_count()} visible); "
                    f"use --nproc-per-node {torch.cuda.device_count()} or fewer"
                )
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            # Ranks that finish their share early wait at the final gather for the slowest: an E run of
            # the study's size 2000 takes far longer than the backends' default 10 or 30 minutes. A rank
            # that fails does not leave the others waiting: torchrun stops them.
            tdist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        return cls(rank, world, device, True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the others."""
        if not self.initialised:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        tdist.gather_object(obj, out, dst=0)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
        if not self.initialised:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.initialised and tdist.is_initialized():
            tdist.destroy_process_group()
            self.initialised = False
