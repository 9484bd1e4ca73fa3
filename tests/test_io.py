import os
import stat

import pytest

from featcache.io import atomic_path, write_json


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
