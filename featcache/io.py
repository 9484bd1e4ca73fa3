"""Safe file I/O: atomic writes (temporary file + rename) and pickle-free checkpoint loading."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import torch

from featcache.errors import FeatcacheError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    # Mode 0666 under the umask, as open() gives (mkstemp would make it 0600, readable by its owner alone).
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, indented, keys in insertion order."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def safe_torch_load(path: Path) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU; refuse anything that needs code to unpickle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FeatcacheError(
            f"refused to load {path}: it holds objects beyond tensors and plain containers, "
            "which would run code to unpickle; only load checkpoints written by featcache or torchvision"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise FeatcacheError(f"{path} is not a readable torch checkpoint ({exc.__class__.__name__}); write it again") from exc
