"""Safe file I/O: atomic writes (temporary file + rename) and pickle-free checkpoint loading."""

from __future__ import annotations

import json
import os
import pickle
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from featcache.core.errors import FeatcacheError


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    return next((p for p in (path, *path.parents) if p.exists()), Path.cwd())


def ensure_writable_dir(path: Path, option: str = "--out", value: Path | str | None = None) -> Path:
    """Check that folder ``path`` exists or can be created, and that files can be written in it.

    Called before a command does any work, so that an output it cannot write is refused at once, with the
    fix, rather than after hours of training. Refuses a path that is a file or lies under one, and a folder
    this process cannot write in (a probe file is created and removed in ``path``, or in its nearest existing
    ancestor: nothing is left behind, so a command refused later for another reason has written nothing).
    ``value``: what was passed as ``option``, when ``path`` is the folder of a file
    (``ensure_writable_dir(out.parent, value=out)``); default ``path``. Returns ``path``.
    """
    path = Path(path)
    shown = f"{option} {path if value is None else value}"
    existing = _existing_ancestor(path)
    if not existing.is_dir():
        where = shown if value is None and existing == path else f"{shown}: {existing}"
        raise FeatcacheError(f"{where} is a file, not a folder; choose another {option} or move the file away")
    probe = existing / f".featcache-write-test-{uuid.uuid4().hex}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        raise FeatcacheError(
            f"{shown}: cannot write in {existing} ({exc.strerror or exc}); "
            f"make that folder writable or choose another {option}"
        ) from exc
    return path


def cannot_write(path: Path, exc: OSError) -> FeatcacheError:
    """The one-line error for an output file that could not be created or replaced."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)):
        return FeatcacheError(
            f"cannot write {path} ({reason}): a file or folder is in the way; "
            "move it away or write the output somewhere else"
        )
    folder = _existing_ancestor(Path(path).parent)
    return FeatcacheError(
        f"cannot write {path} ({reason}); make {folder} writable (or free space on its disk), "
        "or write the output somewhere else"
    )


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block finishes.

    A folder or file that cannot be created ends with `cannot_write`'s one line, not an OSError.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Mode 0666 under the umask, as open() gives (mkstemp would make it 0600, readable by its owner alone).
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise cannot_write(path, exc) from exc
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


#: How every file ``torch.save`` writes begins: a zip archive, or (legacy format) the pickled magic number.
_CHECKPOINT_HEADS = (b"PK\x03\x04", pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1])


def safe_torch_load(path: Path) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU; refuse anything that needs code to unpickle.

    A file that is not a torch checkpoint at all (another kind of file, random bytes) is told apart from one
    that holds objects beyond tensors and plain containers.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(max(len(h) for h in _CHECKPOINT_HEADS))
        if not head.startswith(_CHECKPOINT_HEADS):
            raise FeatcacheError(
                f"{path} is not a torch checkpoint (neither the zip archive nor the legacy file torch.save writes); "
                "replace it with a .pt/.pth file that featcache or torch.save wrote"
            )
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FeatcacheError(
            f"refused to load {path}: it holds objects beyond tensors and plain containers, "
            "which would run code to unpickle; only load checkpoints written by featcache or torchvision"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise FeatcacheError(
            f"{path} is not a readable torch checkpoint ({exc.__class__.__name__}); write it again"
        ) from exc
