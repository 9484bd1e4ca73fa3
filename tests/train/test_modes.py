"""featcache.train.modes: the modes of compare-e2e as data."""

import dataclasses

import pytest

from featcache.train.modes import MODES, Mode


def test_the_study_s_modes_and_featcache_s_in_order():
    assert list(MODES) == ["E", "Es", "F", "FI", "C"]
    assert all(name == mode.name and mode.description for name, mode in MODES.items())


def test_only_c_reads_the_store_and_runs_no_encoder():
    assert [m.name for m in MODES.values() if m.reads_store] == ["C"]
    assert MODES["C"].encoder is None and not MODES["C"].trainable
    assert all(m.source == "encoder" for m in MODES.values() if not m.reads_store)


def test_which_encoder_each_mode_starts_from_and_whether_it_trains():
    table = {name: (m.encoder, m.trainable) for name, m in MODES.items() if not m.reads_store}
    assert table == {"E": ("init", True), "Es": ("ssl", True), "F": ("ssl", False), "FI": ("init", False)}


def test_a_mode_is_a_frozen_record():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODES["C"].trainable = True
    assert Mode("X", "store", None, False, "x").reads_store and not Mode("Y", "encoder", "ssl", True, "y").reads_store
