"""featcache.train.modes: the modes of compare-e2e as data, k a parameter of Tk and Pk."""

import dataclasses

import pytest

from featcache.core.errors import OptionError
from featcache.train.modes import MODES, Mode, describe, mode_of, parse_mode, train_blocks_of


def test_the_study_s_modes_and_featcache_s_in_order():
    assert list(MODES) == ["E", "Es", "F", "FI", "C", "T", "P"]
    assert all(name == mode.name and mode.description for name, mode in MODES.items())
    assert [m.name for m in MODES.values() if m.blocks] == ["T", "P"]


def test_only_c_reads_the_store_and_t_its_cached_tokens():
    assert [m.name for m in MODES.values() if m.reads_store] == ["C"]
    assert MODES["C"].encoder is None and not MODES["C"].trainable
    assert MODES["T"].source == "tokens"
    assert all(m.source == "encoder" for m in MODES.values() if m.name not in ("C", "T"))


def test_which_encoder_each_mode_starts_from_and_whether_it_trains():
    table = {name: (m.encoder, m.trainable) for name, m in MODES.items() if not m.reads_store}
    assert table == {
        "E": ("init", True),
        "Es": ("ssl", True),
        "F": ("ssl", False),
        "FI": ("init", False),
        "T": ("ssl", True),
        "P": ("ssl", True),
    }


def test_k_is_part_of_a_tk_or_pk_name():
    assert parse_mode("T2") == (MODES["T"], 2) and parse_mode("P1") == (MODES["P"], 1)
    assert parse_mode("C") == (MODES["C"], 0) and parse_mode("Es") == (MODES["Es"], 0)
    assert mode_of("T12") is MODES["T"] and train_blocks_of("P3") == 3 and train_blocks_of("F") == 0


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("T0", "zero trained blocks is mode C"),
        ("P0", "zero trained blocks is mode F"),
        ("T", "unknown mode 'T'"),
        ("C2", "unknown mode 'C2'"),
        ("X", "unknown mode 'X'; choose from E, Es, F, FI, C, or Tk / Pk"),
    ],
)
def test_a_name_that_is_no_mode_is_a_usage_error(name, said):
    with pytest.raises(OptionError, match=said):
        parse_mode(name)


def test_a_mode_is_described_with_its_encoder_and_k():
    words = "random ViT-Ti/16"
    assert describe("F", words) == "random ViT-Ti/16 frozen, recomputed at every step (the study's F)"
    assert describe("T2", words).startswith("last 2 block(s) and final norm of the random ViT-Ti/16 trained")
    assert "(what T3 saves)" in describe("P3", words)


def test_a_mode_is_a_frozen_record():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODES["C"].trainable = True
    assert Mode("X", "store", None, False, "x").reads_store and not Mode("Y", "encoder", "ssl", True, "y").reads_store
