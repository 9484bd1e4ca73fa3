import os
import stat

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.io import atomic_path, ensure_writable_dir, safe_torch_load, write_json


def test_outputs_get_the_mode_a_plain_open_gives(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "plain").write_text("x")
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert (tmp_path / "a.json").read_text().strip().endswith("}") and os.listdir(tmp_path) == ["a.json"]


def test_ensure_writable_dir_writes_nothing_and_refuses_a_file_in_the_way(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and os.listdir(tmp_path) == []
    (tmp_path / "notes").write_text("x")
    with pytest.raises(FeatcacheError, match=r"^--out \S+notes is a file, not a folder; choose another --out or move"):
        ensure_writable_dir(tmp_path / "notes")
    with pytest.raises(FeatcacheError, match=r"^--out \S+notes/run: \S+notes is a file, not a folder"):
        ensure_writable_dir(tmp_path / "notes" / "run")
    with pytest.raises(FeatcacheError, match=r"^--out \S+notes/enc\.pt: \S+notes is a file"):
        ensure_writable_dir(tmp_path / "notes", value=tmp_path / "notes" / "enc.pt")
    assert (tmp_path / "notes").read_text() == "x"


def test_an_output_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "notes").write_text("x")
    with pytest.raises(FeatcacheError, match=r"cannot write \S+notes/a\.json \(.*\): a file or folder is in the way"):
        write_json(tmp_path / "notes" / "a.json", {})
    (tmp_path / "taken").mkdir()
    with pytest.raises(FeatcacheError, match=r"cannot write \S+taken \(Is a directory\): a file or folder is in"):
        write_json(tmp_path / "taken", {})
    assert sorted(os.listdir(tmp_path)) == ["notes", "taken"] and os.listdir(tmp_path / "taken") == []


class _Anything:
    """An object that only code could rebuild when unpickling."""


def test_safe_torch_load_tells_other_files_from_checkpoints_needing_code(tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "empty.pt").write_bytes(b"")
    for path in (noise, tmp_path / "empty.pt"):
        with pytest.raises(FeatcacheError, match=rf"^{path} is not a torch checkpoint \(neither .*\); replace it with"):
            safe_torch_load(path)
    for legacy in (False, True):
        torch.save({"a": _Anything()}, tmp_path / "code.pt", _use_new_zipfile_serialization=not legacy)
        with pytest.raises(FeatcacheError, match=r"code\.pt: it holds objects .* which would run code to unpickle"):
            safe_torch_load(tmp_path / "code.pt")
        torch.save({"w": torch.arange(3)}, tmp_path / "ok.pt", _use_new_zipfile_serialization=not legacy)
        assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.arange(3))
