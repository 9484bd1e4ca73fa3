"""featcache.store.integrity: damaged ranges merged and named in one line with the fix; reading rows chunk by chunk;
unwriting the blocks that hold damage."""

import numpy as np
import pytest

from featcache.store import FeatureStore
from featcache.store.errors import DamagedChunksError
from featcache.store.integrity import (
    CHECKSUM,
    MISSING,
    UNDECODABLE,
    Damage,
    damage_fix,
    damage_message,
    merge_damages,
)
from featcache.store.schema import ExtractionRecord
from tests.helpers import fill_store, flip_chunk_byte, make_store


def test_a_damage_names_one_row_or_an_inclusive_range():
    assert Damage("features", 4, 5, CHECKSUM).rows == "row 4"
    assert Damage("features", 4, 8, CHECKSUM).rows == "rows 4-7"


def test_adjacent_ranges_of_one_array_and_kind_merge_in_order():
    damages = [
        Damage("masks", 3, 4, CHECKSUM, "third"),
        Damage("features", 1, 2, MISSING),
        Damage("masks", 2, 3, CHECKSUM, "second"),
        Damage("masks", 4, 5, UNDECODABLE),  # adjacent, but another kind
        Damage("masks", 6, 7, CHECKSUM),  # same kind, not adjacent
        Damage("features", 2, 3, MISSING),
    ]
    assert merge_damages(damages) == [
        Damage("features", 1, 3, MISSING),
        Damage("masks", 2, 4, CHECKSUM, "second"),
        Damage("masks", 4, 5, UNDECODABLE),
        Damage("masks", 6, 7, CHECKSUM),
    ]
    assert merge_damages([]) == []


def test_damage_to_arrays_written_once_calls_for_a_new_extraction_else_for_repair():
    blocks = [Damage("features", 0, 2, CHECKSUM), Damage("written", 2, 4, MISSING)]
    assert damage_fix("s.zarr", blocks) == (
        "run `featcache verify s.zarr --repair`, then the same `featcache extract ... --out s.zarr` "
        "to recompute those samples"
    )
    fixed = damage_fix("s.zarr", [*blocks, Damage("split", 0, 2, MISSING), Damage("ids", 0, 2, MISSING)])
    assert fixed.startswith("ids/split are written once at creation and cannot be recomputed by resuming")
    assert fixed.endswith("`featcache extract ... --out s.zarr --overwrite`")


def test_the_message_shows_four_ranges_and_counts_the_rest():
    damages = [Damage("images", 2 * i, 2 * i + 1, CHECKSUM) for i in range(6)]
    message = damage_message("s.h5", damages)
    assert message.startswith(
        "s.h5 is damaged: images row 0 (checksum mismatch), images row 2 (checksum mismatch), "
        "images row 4 (checksum mismatch), images row 6 (checksum mismatch) and 2 more; run `featcache verify s.h5"
    )
    assert "row 8" not in message and "\n" not in message
    assert (
        damage_message("s.h5", damages[:1])
        == f"s.h5 is damaged: images row 0 (checksum mismatch); {damage_fix('s.h5', damages)}"
    )


def damaged_store(path):
    """A complete 5-sample store (blocks of 2) whose features of row 2 fail their checksum; returns its features."""
    with make_store(path) as store:
        feats, _, _ = fill_store(store)
        store.mark_complete(ExtractionRecord())
    flip_chunk_byte(path, "features", 2)
    return feats


def test_check_rows_narrows_a_failed_read_to_the_chunks_that_fail_alone(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    damaged_store(path)
    with FeatureStore.open(path) as store:
        assert store.check_rows("features", 0, 2) == [] and store.check_rows("masks", 0, 5) == []
        (damage,) = store.check_rows("features", 0, 5)
    per_sample = store_suffix == ".h5"  # one HDF5 chunk per sample, one Zarr shard per block
    assert (damage.array, damage.start, damage.stop, damage.what) == ("features", 2, 3 if per_sample else 4, CHECKSUM)
    assert damage.detail


def test_check_whole_refuses_lost_chunks_in_one_line_with_the_fix(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill_store(store)
        store.check_whole()
        store.backend.delete_chunks("images", 0, 2)
        if store_suffix == ".zarr":  # an HDF5 chunk cannot be removed: its rows are zeroed, still allocated
            with pytest.raises(DamagedChunksError) as err:
                store.check_whole()
            assert str(err.value) == f"{path} is damaged: images rows 0-1 (missing); {damage_fix(path, [])}"
        else:
            store.check_whole()
            assert not store.read("images", [0, 1]).any()


def test_unwriting_clears_the_damaged_blocks_so_extract_computes_them_again(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    feats = damaged_store(path)
    with FeatureStore.open(path, writable=True) as store:
        damages = store.check_rows("features", 0, 5)
        assert store.unwrite([Damage("ids", 0, 2, CHECKSUM)]) == [] and store.record.complete  # never rewritten
        assert store.unwrite(damages) == [(2, 4)]
        assert not store.record.complete
        assert store.written().tolist() == [True, True, False, False, True]
        assert store.check_rows("features", 0, 5) == [] and store.missing_chunks() == []
        assert not store.read("features", [2]).any()  # the damaged chunk is gone, not left to trip a read
        np.testing.assert_array_equal(store.read("features", [0, 4]), feats[[0, 4]].half().numpy())
    with pytest.raises(Exception, match="is incomplete"):
        FeatureStore.open(path)


def test_missing_chunks_of_written_blocks_are_damaged_blocks(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill_store(store)
        store.unwrite([Damage("masks", 2, 4, MISSING)])  # a block whose chunks were cleared, then flagged anew
        assert store.missing_chunks() == []
        store.backend["written"][2:4] = True
        assert [d.array for d in store.missing_chunks() if d.start == 2] == (
            ["masks"] if store_suffix == ".zarr" else []
        )
        assert store.damaged_blocks() == ([2] if store_suffix == ".zarr" else [])
