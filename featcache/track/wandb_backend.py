"""Weights & Biases: runs under ``OUT/wandb``, online when the user has logged in (``wandb login`` or
``WANDB_API_KEY``) and offline otherwise (``wandb sync OUT/wandb/offline-run-*`` uploads them later);
``WANDB_MODE`` overrides both. The project is ``WANDB_PROJECT``, else ``featcache``; a sweep is a W&B group.
"""

from __future__ import annotations

import netrc
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import wandb

from featcache.track.base import ParamValue, Status

DEFAULT_PROJECT = "featcache"
#: W&B's longest tag (characters).
TAG_CHARS = 64
_EXIT_CODE = {"finished": 0, "failed": 1, "killed": 130}


def logged_in(env: Mapping[str, str] = os.environ) -> bool:
    """An API key in ``WANDB_API_KEY`` or in the netrc file (``NETRC``, else ~/.netrc) for W&B's host."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(env.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(env: Mapping[str, str] = os.environ) -> str | None:
    """None (W&B decides: ``WANDB_MODE``, else online) when ``WANDB_MODE`` is set or the user logged in; else
    ``offline``."""
    return None if env.get("WANDB_MODE") or logged_in(env) else "offline"


class WandbTracker:
    name = "wandb"

    def __init__(self, out: Path) -> None:
        self.out = Path(out)

    def start_run(
        self,
        *,
        name: str,
        group: str | None,
        params: Mapping[str, ParamValue],
        tags: Mapping[str, str],
        run_id: str | None,
        parent_id: str | None = None,
    ) -> WandbRun:
        self.out.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            group=group,
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            config=dict(params),
            tags=[f"{k}={v}"[:TAG_CHARS] for k, v in tags.items()],
            dir=str(self.out),
            mode=wandb_mode(),
            # Runs of a sweep may train side by side in one process; W&B would otherwise end the one before.
            reinit="create_new",
            # console "off": W&B must not wrap stdout and stderr, which the progress bars and tables own.
            settings=wandb.Settings(console="off", silent=True),
        )
        return WandbRun(run)

    def close(self) -> None:
        """Each run ends itself."""


class WandbRun:
    def __init__(self, run: wandb.Run) -> None:
        self.id = run.id
        self._run = run

    def log_epoch(self, *, epoch: int, metrics: Mapping[str, float]) -> None:
        self._run.log(dict(metrics), step=epoch)

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        self._run.summary.update(dict(metrics))

    def log_artifact(self, path: Path) -> None:
        # Copied into the run's files folder, which W&B uploads when the run ends (or `wandb sync` does, offline):
        # `Run.save` would link them instead, and say so on stderr.
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            target = Path(self._run.dir) / file.relative_to(path.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)

    def end(self, status: Status) -> None:
        self._run.finish(exit_code=_EXIT_CODE[status])
