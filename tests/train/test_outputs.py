"""featcache.train.outputs: a run's folder, the names of groups of runs, a finished run recognised, and what a
run writes."""

import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.results.records import RunResults
from featcache.train.config import RunKey
from featcache.train.outputs import (
    combination_name,
    finished_run,
    group_name,
    run_dir,
    runs_label,
    write_run,
)
from tests.helpers import hand_made_results

HISTORY = {"train_loss": [0.9, 0.5, 0.4], "val_loss": [1.0, 0.7, 0.8]}


def keys(*seeds, lr=2e-4, weight_decay=1e-4):
    return [RunKey("C", 8, seed, lr, weight_decay) for seed in seeds]


def test_a_run_lives_in_its_seed_folder_under_its_grid_combination(tmp_path):
    assert run_dir(tmp_path, 3) == tmp_path / "seed-3"
    assert run_dir(tmp_path, 0, "lr-1e-3_wd-0e0") == tmp_path / "lr-1e-3_wd-0e0" / "seed-0"


def test_a_combination_is_named_by_its_numbers():
    assert combination_name(2e-4, 1e-4) == "lr-2e-4_wd-1e-4"
    assert combination_name(2.5e-4, 0.0) == "lr-2.5e-4_wd-0e0"
    assert combination_name(1.0, 0.05) == "lr-1e0_wd-5e-2"


def test_group_names_are_the_seeds_or_the_one_run_or_a_digest_of_the_grid():
    assert group_name(keys(0, 1, 2), grid=False) == "0-1-2" and group_name(keys(4), grid=False) == "4"
    assert group_name(keys(1), grid=True) == "lr-2e-4_wd-1e-4-seed-1"
    digest = group_name(keys(0, 1), grid=True)
    assert digest.startswith("grid-") and len(digest) == len("grid-") + 12
    assert digest == group_name(keys(0, 1), grid=True) != group_name(keys(0, 1, lr=1e-3), grid=True)


def test_labels_say_which_runs_train_together():
    assert runs_label(keys(0), grid=False) == "seed 0" and runs_label(keys(0, 1), grid=False) == "seeds 0-1"
    assert runs_label(keys(2, lr=1e-3), grid=True) == "lr 1e-3 wd 1e-4 seed 2"
    assert runs_label(keys(0, 1, 2), grid=True) == "3 runs of the grid"


def test_a_finished_run_of_the_same_identity_is_kept_and_one_of_another_refused(tmp_path):
    assert finished_run(tmp_path, {"config": 1}) is None
    hand_made_results(store_identity={"config": 1}, iou=0.6).write(tmp_path / "results.json")
    kept = finished_run(tmp_path, {"config": 1})
    assert isinstance(kept, RunResults) and kept.test.iou == pytest.approx(0.6)
    with pytest.raises(FeatcacheError) as err:
        finished_run(tmp_path, {"config": 2})
    assert str(err.value) == (
        f"{tmp_path} holds a finished run of another configuration; choose another --out or delete it"
    )


def test_a_run_writes_its_results_its_loss_curve_and_its_checkpoint_when_given(tmp_path):
    results = hand_made_results(history=HISTORY, best_epoch=2)
    write_run(tmp_path / "a", results, None)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["loss_curve.png", "results.json"]
    assert RunResults.read(tmp_path / "a" / "results.json") == results
    assert (tmp_path / "a" / "loss_curve.png").read_bytes().startswith(b"\x89PNG")

    class Checkpoint:
        def to_dict(self):
            return {"format": 1, "state_dict": {"w": torch.ones(2)}}

    write_run(tmp_path / "b", results, Checkpoint())
    saved = torch.load(tmp_path / "b" / "decoder.pt", weights_only=True)
    assert saved["format"] == 1 and torch.equal(saved["state_dict"]["w"], torch.ones(2))
