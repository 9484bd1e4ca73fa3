"""``--track`` and ``FEATCACHE_TRACK``: which backends a command tracks to, and opening them (imported only then:
mlflow alone takes seconds to import)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from featcache.core.errors import FeatcacheError, check_choice
from featcache.track.fanout import Trackers

#: The backends, as ``--track`` names them.
TRACKERS = ("mlflow", "tensorboard", "wandb")
ENV_VAR = "FEATCACHE_TRACK"
TRACK_HELP = (
    "Track runs in mlflow (OUT/mlflow.db, or MLFLOW_TRACKING_URI), tensorboard (OUT/tensorboard) or wandb "
    f"(offline unless logged in); repeatable. Default: ${ENV_VAR} (comma-separated)."
)
_BACKEND_CLASS = {
    "mlflow": ("featcache.track.mlflow_backend", "MlflowTracker"),
    "tensorboard": ("featcache.track.tensorboard_backend", "TensorBoardTracker"),
    "wandb": ("featcache.track.wandb_backend", "WandbTracker"),
}


def _missing(name: str, detail: str = "") -> FeatcacheError:
    return FeatcacheError(f"--track {name} needs the {name} package{detail}: pip install 'featcache[{name}]'")


def parse_track(values: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The ``--track`` values (repeatable; each may also list names with commas), or else ``$FEATCACHE_TRACK``
    -> distinct backend names, in order.

    Refuses a name that is no backend (`OptionError`) and a backend whose package is not installed.
    """
    env = os.environ if env is None else env
    source, items = ("--track", values) if values else (ENV_VAR, [env.get(ENV_VAR, "")])
    names: list[str] = []
    for item in items:
        for name in filter(None, (part.strip().lower() for part in item.split(","))):
            check_choice(source, name, TRACKERS)
            if name not in names:
                names.append(name)
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise _missing(name)
    return tuple(names)


def open_trackers(names: Sequence[str], *, out: Path, rank: int = 0) -> Trackers:
    """The backends ``names`` writing under ``out`` (the command's output folder), imported now.

    Only rank 0 of a torchrun job tracks: other ranks (``rank`` != 0) get trackers that do nothing.
    """
    if rank != 0:
        return Trackers()
    trackers = []
    for name in names:
        module, cls = _BACKEND_CLASS[name]
        try:
            backend = importlib.import_module(module)
        except ImportError as exc:
            raise _missing(name, f" ({type(exc).__name__}: {exc})") from exc
        trackers.append(getattr(backend, cls)(Path(out)))
    return Trackers(trackers)
