"""featcache.train.resume: a run's resume state, written when due and refused for another run."""

import pytest
import torch

import featcache.train.resume
from featcache.core.errors import FeatcacheError
from featcache.train.resume import Checkpointer

IDENTITY = {"store": "s.zarr", "size": 8, "seeds": [0, 1]}


def test_no_state_loads_as_none(tmp_path):
    assert Checkpointer(tmp_path / "resume.pt", IDENTITY).load() is None


def test_a_saved_state_loads_back(tmp_path, capsys):
    path = tmp_path / "run" / "resume.pt"
    path.parent.mkdir()
    state = {"epoch": 3, "weights": {"w": torch.arange(4.0)}, "histories": [{"val_loss": [0.5, 0.4, 0.3]}]}
    Checkpointer(path, IDENTITY).save(state)
    assert [p.name for p in path.parent.iterdir()] == ["resume.pt"]  # written atomically: no temporary left
    loaded = Checkpointer(path, dict(IDENTITY)).load()
    assert loaded["epoch"] == 3 and loaded["histories"] == state["histories"]
    assert torch.equal(loaded["weights"]["w"], torch.arange(4.0))
    assert f"resuming from {path} (epoch 3 finished)" in capsys.readouterr().err


@pytest.mark.parametrize("other", [{**IDENTITY, "size": 16}, {**IDENTITY, "seeds": [0]}, {}])
def test_the_state_of_another_run_is_refused_in_one_line(tmp_path, other):
    path = tmp_path / "resume.pt"
    Checkpointer(path, IDENTITY).save({"epoch": 1})
    with pytest.raises(FeatcacheError) as info:
        Checkpointer(path, other).load()
    assert str(info.value) == (
        f"{path} holds an interrupted run of another configuration; delete it or choose another --out"
    )
    assert path.exists()  # not ours to delete


def test_a_file_that_is_not_a_resume_state_is_refused(tmp_path):
    path = tmp_path / "resume.pt"
    torch.save([1, 2], path)
    with pytest.raises(FeatcacheError, match="holds an interrupted run of another configuration"):
        Checkpointer(path, IDENTITY).load()


def test_due_after_every_seconds_since_the_last_write_and_at_the_last_epoch(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(featcache.train.resume.time, "monotonic", lambda: clock[0])
    checkpointer = Checkpointer(tmp_path / "resume.pt", IDENTITY, every_seconds=60)
    clock[0] = 159.0
    assert not checkpointer.due(1, 10) and checkpointer.due(10, 10)  # the last epoch: always
    clock[0] = 160.0
    assert checkpointer.due(2, 10)
    checkpointer.save({"epoch": 2})  # the clock starts again from this write
    clock[0] = 219.0
    assert not checkpointer.due(3, 10)
    clock[0] = 220.5
    assert checkpointer.due(3, 10)
    assert Checkpointer(tmp_path / "b.pt", IDENTITY, every_seconds=0).due(1, 10)  # 0: after every epoch


def test_done_deletes_the_state_once_the_outputs_are_written(tmp_path):
    checkpointer = Checkpointer(tmp_path / "resume.pt", IDENTITY)
    checkpointer.save({"epoch": 5})
    checkpointer.done()
    assert not checkpointer.path.exists() and checkpointer.load() is None
    checkpointer.done()  # nothing left: no error
