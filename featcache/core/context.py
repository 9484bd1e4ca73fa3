"""The execution context of a command: where it runs and how, resolved once where the command starts.

A configuration (`featcache.train.SweepConfig`, `featcache.store.ExtractConfig`, ...) says what to compute;
a `Context` says where and how: the device, whether CUDA graphs replay the epochs, whether progress bars
show, how often resume state is written, the torchrun ranks, and where runs are reported: the experiment
trackers (``--track``) and the command line that started the command (written beside its outputs). Library
functions take both; nothing below the command resolves a device again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from featcache.core.ranks import Distributed
from featcache.core.runtime import resolve_device


@dataclass(frozen=True)
class Invocation:
    """The command line that started a command: ``argv`` as typed (``featcache`` first) and ``config``, the TOML
    text of its options as resolved, defaults included (`featcache.cli.config_file.resolved_config`), which the
    command writes beside its outputs (``OUT/config.toml``) and which ``--config`` reads back."""

    argv: tuple[str, ...]
    config: str


@dataclass(frozen=True)
class Context:
    """Where and how a command runs.

    ``cuda_graphs``: each training epoch and validation pass replayed as a CUDA graph after the first
    (`featcache.train.graphs`); True only on a CUDA device. ``checkpoint_seconds``: the least wall time between
    two writes of a run's resume state (0: after every epoch). ``ranks``: this process's torchrun rank (a
    single process without torchrun). ``track``: the experiment trackers the runs are reported to
    (`featcache.track.TRACKERS`; only rank 0 reports). ``invocation``: the command line, when one started it.
    """

    device: torch.device = torch.device("cpu")
    cuda_graphs: bool = False
    progress: bool = True
    checkpoint_seconds: float = 60.0
    ranks: Distributed = field(default_factory=Distributed)
    track: tuple[str, ...] = ()
    invocation: Invocation | None = None

    @classmethod
    def resolve(
        cls,
        device: str = "auto",
        *,
        cuda_graphs: bool = True,
        progress: bool = True,
        checkpoint_seconds: float = 60.0,
        ranks: bool = False,
        track: Sequence[str] = (),
        invocation: Invocation | None = None,
    ) -> Context:
        """The context of ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); with ``ranks``, of this torchrun
        rank (`Distributed.from_env`: one GPU per rank, or gloo on the CPU)."""
        dist = Distributed.from_env(device) if ranks else Distributed(device=resolve_device(device))
        return cls(
            device=dist.device,
            cuda_graphs=cuda_graphs and dist.device.type == "cuda",
            progress=progress,
            checkpoint_seconds=checkpoint_seconds,
            ranks=dist,
            track=tuple(track),
            invocation=invocation,
        )

    @property
    def is_main(self) -> bool:
        """Whether this process reports and writes what is shared: rank 0, or the only process."""
        return self.ranks.is_main

    def close(self) -> None:
        """Leave torchrun's process group, if this context joined one (a no-op otherwise; idempotent)."""
        self.ranks.close()
