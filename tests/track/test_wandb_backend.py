"""W&B: offline runs (no network) read back from their run folder; online only for a user who logged in."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from featcache.track import open_trackers

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

from featcache.track.wandb_backend import wandb_mode  # noqa: E402

BLOCK, HEADER = 32768, 7  # the .wandb file: a 7-byte header, then 32 KiB blocks of records (LevelDB's log format)


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a ``run-ID.wandb`` file (W&B's own format: records cut into chunks with 7-byte headers)."""
    data, pos, chunks, out = path.read_bytes(), HEADER, b"", []
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if room >= 7 else (0, 0, 0)
        if room < 7 or (length, kind) == (0, 0):  # a block's padding
            pos += room
            continue
        chunks, pos = chunks + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            out.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return out


def item_value(item) -> tuple[str, object]:
    return item.key or "/".join(item.nested_key), json.loads(item.value_json)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for key in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb-home"))


def test_an_offline_run_holds_what_was_logged(tmp_path, offline, fake_run):
    trackers = open_trackers(["wandb"], out=tmp_path / "out")
    run = trackers.start_run(name="C/n10/seed-0", group="sweep", params=fake_run.params, tags={"command": "test"})
    fake_run.log(run)
    trackers.close()
    # W&B's service process writes the run file; `Run.finish` need not wait for it, the teardown (as at exit) does.
    wandb.teardown()
    run_id, results = run.ids["wandb"], fake_run.results
    (folder,) = (tmp_path / "out" / "wandb").glob(f"offline-run-*-{run_id}")
    assert json.loads((folder / "files" / "results.json").read_text()) == results
    assert (folder / "files" / "figures" / "curves.png").is_file()
    stored = records(folder / f"run-{run_id}.wandb")
    (info,) = (r.run for r in stored if r.WhichOneof("record_type") == "run")
    assert (info.run_id, info.run_group, info.display_name, list(info.tags)) == (
        run_id,
        "sweep",
        "C/n10/seed-0",
        ["command=test"],
    )
    assert dict(item_value(i) for i in info.config.update if not i.key.startswith("_")) == results["params"]
    history = [dict(map(item_value, r.history.item)) for r in stored if r.WhichOneof("record_type") == "history"]
    assert [{key: h[key] for key in ("_step", "train_loss", "val_loss", "epoch_seconds")} for h in history] == [
        {"_step": row["epoch"], **{k: v for k, v in row.items() if k != "epoch"}} for row in results["history"]
    ]
    summary = {}
    for r in stored:
        if r.WhichOneof("record_type") == "summary":
            summary.update(map(item_value, r.summary.update))
    assert {key: summary[key] for key in results["test"]} == results["test"]


def test_offline_unless_logged_in_or_told(tmp_path):
    assert wandb_mode({"NETRC": str(tmp_path / "none")}) == "offline"
    assert wandb_mode({"NETRC": str(tmp_path / "none"), "WANDB_MODE": "disabled"}) is None
    assert wandb_mode({"NETRC": str(tmp_path / "none"), "WANDB_API_KEY": "k" * 40}) is None
    (tmp_path / "netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
    assert wandb_mode({"NETRC": str(tmp_path / "netrc")}) is None
    assert wandb_mode({"NETRC": str(tmp_path / "netrc"), "WANDB_BASE_URL": "https://wandb.example.org"}) == "offline"
