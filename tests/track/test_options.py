"""--track and FEATCACHE_TRACK, opening the trackers, and rank 0 alone: no tracker package needed."""

from __future__ import annotations

import sys

import pytest

from featcache.core.errors import FeatcacheError, OptionError
from featcache.track import open_trackers, parse_track
from featcache.track import options as track_options


def test_track_names_come_from_the_repeatable_option_else_the_environment():
    assert parse_track(["mlflow", "tensorboard,MLflow"], env={}) == ("mlflow", "tensorboard")
    assert parse_track(None, env={"FEATCACHE_TRACK": "tensorboard, mlflow"}) == ("tensorboard", "mlflow")
    assert parse_track(["tensorboard"], env={"FEATCACHE_TRACK": "mlflow"}) == ("tensorboard",)
    assert parse_track([], env={}) == ()


@pytest.mark.parametrize(
    ("values", "env", "source"),
    [(["mlflow,neptune"], {}, "--track"), (None, {"FEATCACHE_TRACK": "neptune"}, "FEATCACHE_TRACK")],
)
def test_an_unknown_tracker_is_a_usage_error_listing_the_choices(values, env, source):
    with pytest.raises(OptionError) as info:
        parse_track(values, env=env)
    assert str(info.value) == f"{source} neptune is not one of mlflow, tensorboard, wandb"


def test_a_tracker_whose_package_is_missing_names_the_pip_command(monkeypatch):
    real = track_options.importlib.util.find_spec
    monkeypatch.setattr(track_options.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(FeatcacheError) as info:
        parse_track(["tensorboard", "wandb"], env={})
    assert str(info.value) == "--track wandb needs the wandb package: pip install 'featcache[wandb]'"


def test_a_backend_that_cannot_be_imported_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.delitem(sys.modules, "featcache.track.mlflow_backend", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    with pytest.raises(FeatcacheError) as info:
        open_trackers(["mlflow"], out=tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.endswith(": pip install 'featcache[mlflow]'")


def test_ranks_other_than_0_track_nothing_and_write_nothing(tmp_path, fake_run):
    out = tmp_path / "out"
    trackers = open_trackers(["mlflow", "tensorboard", "wandb"], out=out, rank=1)
    run = trackers.start_run(name="seed-0", group="sweep", params=fake_run.params)
    fake_run.log(run)
    trackers.close()
    assert trackers.names == () and run.ids == {} and not out.exists()
