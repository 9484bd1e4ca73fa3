"""Device choice and the console objects every command shares."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from rich.console import Console

from featcache.core.errors import FeatcacheError, OptionError


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes: whole tables, 160 columns, rather than rich's 80; a terminal or COLUMNS decides otherwise.
    wide = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, soft_wrap=True, width=160 if wide else None)


#: Progress bars and logs: stderr. Results (tables): stdout.
err_console = _console(stderr=True)
out_console = _console()


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` -> a usable device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise OptionError(f"--device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatcacheError(f"--device {spec}: no CUDA GPU is visible here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FeatcacheError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible; use "
                f"cuda:0..{torch.cuda.device_count() - 1}"
            )
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so wall-clock timings measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wait_for_stream(device: torch.device) -> None:
    """Wait for the work queued on this thread's current CUDA stream (a no-op on the CPU): timings of one
    training loop, not of whatever other threads run on the same GPU."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def autocast(device: torch.device):
    """bf16 autocast on CUDA, off on the CPU (where bf16 matmuls are slower and change results).

    Without autocast's cache of cast weights: a CUDA graph must not capture casts that the cache would
    skip on replay, and a training step uses each weight once, so the cache saves nothing there.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda", cache_enabled=False)


def compute_precision(device: torch.device) -> str:
    """What `autocast` computes in on ``device``, as recorded in a store's provenance."""
    return "bfloat16 autocast" if device.type == "cuda" else "float32"


#: Held while torch's global CPU generator is seeded or drawn from to build modules: threads that build
#: decoders side by side (`featcache.train.sizes`) would otherwise draw from each other's seeded streams.
GLOBAL_RNG = threading.RLock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules under torch's CPU generator seeded with ``seed``, leaving the global random state as it was
    (one thread at a time: `GLOBAL_RNG`)."""
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def placement(device: torch.device | str, nbytes: int, headroom: float = 0.5) -> torch.device:
    """``device`` if ``nbytes`` fit in its free memory with ``headroom`` to spare, else the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached by torch, reusable
    return device if nbytes < free * (1 - headroom) else torch.device("cpu")
