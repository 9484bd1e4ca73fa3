"""featcache.train.loop: the one epoch loop, driven by a scripted task (no decoder, no data)."""

from __future__ import annotations

import math

import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.core.progress import EpochEnd
from featcache.train.loop import run_epochs
from featcache.train.resume import Checkpointer

CPU = torch.device("cpu")
#: Per epoch, the losses of two runs trained together. Run 0's best epoch is 2; run 1's is 3 (epoch 4 only ties it).
TRAIN = [[1.0, 2.0], [0.8, 1.5], [0.6, 1.2], [0.5, 1.0]]
VAL = [[0.9, 0.8], [0.5, 0.9], [0.7, 0.4], [0.6, 0.4]]


class Interrupted(Exception):
    """The scripted task stops as a killed process would."""


class ScriptedTask:
    """An `EpochTask` of two runs whose losses are ``train`` and ``val`` (`TRAIN`, `VAL`): its "weights" are the
    number of the epoch last trained, per run; ``stop_at``: the epoch whose training raises `Interrupted`."""

    runs = 2

    def __init__(self, val=VAL, train=TRAIN, stop_at: int | None = None) -> None:
        self.val, self.train, self.stop_at = val, train, stop_at
        self.epoch = 0
        self.trained: list[int] = []  # the epochs this task object trained

    def train_epoch(self) -> torch.Tensor:
        self.epoch += 1
        if self.epoch == self.stop_at:
            raise Interrupted
        self.trained.append(self.epoch)
        return torch.tensor(self.train[self.epoch - 1])

    def validate(self) -> torch.Tensor:
        return torch.tensor(self.val[self.epoch - 1])

    def snapshot(self, runs: list[int]) -> list[dict]:
        return [{"w": torch.full((2,), float(self.epoch * 10 + k))} for k in runs]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]

    def divergence(self, epoch: int, runs: list[int]) -> FeatcacheError:
        return FeatcacheError(f"runs {runs} diverged at epoch {epoch}")


def test_each_run_keeps_its_epoch_of_lowest_validation_loss():
    task = ScriptedTask()
    result = run_epochs(task, epochs=4, device=CPU)
    assert [b.epoch for b in result.bests] == [2, 3]
    assert [b.val_loss for b in result.bests] == pytest.approx([0.5, 0.4])
    assert torch.equal(result.bests[0].weights["w"], torch.full((2,), 20.0))
    assert torch.equal(result.bests[1].weights["w"], torch.full((2,), 31.0))
    assert all(b.weights["w"].device.type == "cpu" for b in result.bests)
    for k in range(2):
        assert result.histories[k]["train_loss"] == pytest.approx([row[k] for row in TRAIN])
        assert result.histories[k]["val_loss"] == pytest.approx([row[k] for row in VAL])
    assert task.trained == [1, 2, 3, 4] and len(result.epoch_train_seconds) == 4
    assert 0 < result.train_seconds <= result.total_seconds
    assert result.train_seconds == pytest.approx(sum(result.epoch_train_seconds))


def test_the_progress_callback_gets_an_epoch_end_after_each_epoch():
    ends: list[EpochEnd] = []
    run_epochs(ScriptedTask(), epochs=4, device=CPU, progress=ends.append)
    assert all(isinstance(end, EpochEnd) for end in ends)
    assert [(e.epoch, e.epochs, e.best_epoch) for e in ends] == [(1, 4, 1), (2, 4, 2), (3, 4, 2), (4, 4, 2)]
    assert [e.train_loss for e in ends] == pytest.approx([sum(row) / 2 for row in TRAIN])  # the runs' mean
    assert [e.val_loss for e in ends] == pytest.approx([sum(row) / 2 for row in VAL])


@pytest.mark.parametrize(("which", "bad"), [("val", math.nan), ("val", math.inf), ("train", math.nan)])
def test_a_non_finite_loss_stops_with_the_tasks_error_and_deletes_the_resume_state(tmp_path, which, bad):
    checkpointer = Checkpointer(tmp_path / "resume.pt", {"run": 1}, every_seconds=0)
    losses = {"val": [list(row) for row in VAL], "train": [list(row) for row in TRAIN]}
    losses[which][2][1] = bad
    task = ScriptedTask(**losses)
    states: list[bool] = []
    with pytest.raises(FeatcacheError, match=r"^runs \[1\] diverged at epoch 3$"):
        run_epochs(
            task,
            epochs=4,
            device=CPU,
            checkpointer=checkpointer,
            progress=lambda end: states.append(checkpointer.path.exists()),
        )
    assert task.trained == [1, 2, 3] and states == [True, True]  # written after epochs 1 and 2; no progress after 3
    assert not checkpointer.path.exists()  # deleted: resumed, the run would diverge again


def test_a_resumed_loop_continues_after_the_saved_epoch_to_the_same_result(tmp_path):
    whole = run_epochs(ScriptedTask(), epochs=4, device=CPU)
    path = tmp_path / "resume.pt"
    with pytest.raises(Interrupted):
        run_epochs(ScriptedTask(stop_at=3), epochs=4, device=CPU, checkpointer=Checkpointer(path, {"run": 1}, 0))
    assert torch.load(path, weights_only=True)["state"]["epoch"] == 2
    task, ends = ScriptedTask(), []
    resumed = run_epochs(
        task, epochs=4, device=CPU, checkpointer=Checkpointer(path, {"run": 1}, 0), progress=ends.append
    )
    # The restored epochs are reported again first (experiment trackers pick the run up from them), seconds included.
    assert task.trained == [3, 4] and [e.epoch for e in ends] == [1, 2, 3, 4]
    assert [list(e.train_losses) for e in ends] == [[h["train_loss"][i] for h in whole.histories] for i in range(4)]
    assert [list(e.val_losses) for e in ends] == [[h["val_loss"][i] for h in whole.histories] for i in range(4)]
    assert all(e.seconds is not None and e.seconds >= 0 for e in ends)
    assert resumed.histories == whole.histories
    assert [(b.epoch, b.val_loss) for b in resumed.bests] == [(b.epoch, b.val_loss) for b in whole.bests]
    assert all(torch.equal(r.weights["w"], w.weights["w"]) for r, w in zip(resumed.bests, whole.bests, strict=True))
    assert len(resumed.epoch_train_seconds) == 2  # only the epochs this call ran
    assert resumed.train_seconds > sum(resumed.epoch_train_seconds)  # the saved epochs' seconds carried over


def test_the_resume_state_is_written_when_due_and_after_the_last_epoch(tmp_path):
    saved: list[int] = []

    class Counting(Checkpointer):
        def save(self, state):
            saved.append(state["epoch"])
            super().save(state)

    run_epochs(ScriptedTask(), epochs=4, device=CPU, checkpointer=Counting(tmp_path / "a.pt", {}, every_seconds=3600))
    assert saved == [4]
    saved.clear()
    run_epochs(ScriptedTask(), epochs=4, device=CPU, checkpointer=Counting(tmp_path / "b.pt", {}, every_seconds=0))
    assert saved == [1, 2, 3, 4]


def test_a_resume_state_without_the_task_is_refused(tmp_path):
    checkpointer = Checkpointer(tmp_path / "resume.pt", {"run": 1}, every_seconds=0)
    checkpointer.save({"epoch": 2, "decoder": {}})  # as an older featcache wrote it
    with pytest.raises(FeatcacheError, match=r"resume\.pt was written by an older featcache; delete it to start again"):
        run_epochs(ScriptedTask(), epochs=4, device=CPU, checkpointer=checkpointer)
