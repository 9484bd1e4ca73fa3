"""featcache.store.writing: one block written from the extraction's rows, the room checked first, and a failed
write turned into one line with the fix."""

import errno

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.store import writing
from featcache.store.room import Room
from featcache.store.schema import SKIPPED
from featcache.store.writing import explain_write_errors, raise_if_write_failed, write_or_explain
from tests.helpers import make_store

FIX = "free disk space or fix its permissions, then run the same command again: the blocks already written are kept"


def block_rows(n: int, seed: int = 0) -> dict[str, list]:
    """The rows of one block of a `make_store` store as extraction gathers them: two batches each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    masks = (images[:, 0] > 127).astype(np.uint8)
    feats = torch.randn(n, 4, 8, 2, 2, generator=torch.Generator().manual_seed(seed))
    cut = n // 2
    return {
        "images": [images[:cut], images[cut:]],
        "masks": [masks[:cut], masks[cut:]],
        "features": [feats[:cut], feats[cut:]],
        "bad": [],
    }


def test_a_block_of_several_batches_is_written_whole_with_its_bad_rows_left_out(tmp_path, store_suffix):
    with make_store(tmp_path / f"s{store_suffix}", n=6, shard_size=4) as store:
        rows = block_rows(4)
        rows["bad"] = [2]
        write_or_explain(store, 0, rows)
        last = block_rows(2, seed=1)
        last_features = torch.cat(last["features"])
        write_or_explain(store, 4, {**last, "features": [last_features]})  # one batch: written as it is
        assert store.written().all()
        assert np.array_equal(store.read("images", range(4)), np.concatenate(rows["images"]))
        assert np.array_equal(store.read("masks", [4, 5]), np.concatenate(last["masks"]))
        torch.testing.assert_close(
            store.features([1, 5]), torch.stack([rows["features"][0][1], last_features[1]]).half()
        )
        assert store.splits.tolist() == ["train", "train", SKIPPED, "val", "val", "test"]


def test_the_room_is_checked_before_the_write(tmp_path, monkeypatch):
    asked = []

    def no_room(out, room, what, *, fix):
        asked.append((out, room, what))
        raise FeatcacheError(f"{out} needs more room; {fix}")

    monkeypatch.setattr(writing, "check_room", no_room)
    path = tmp_path / "s.zarr"
    with make_store(path, n=6, shard_size=4) as store:
        with pytest.raises(FeatcacheError, match="needs more room; free some space, then run the same command again"):
            write_or_explain(store, 4, block_rows(2))
        assert not store.written().any()
    ((out, room, what),) = asked
    assert (out, what) == (str(path), "samples 4 to 5")
    per_row = 3 * 32 * 32 + 32 * 32 + 4 * 8 * 2 * 2 * 2 + 1  # image, mask, float16 features, flag
    assert isinstance(room, Room) and room.total >= 2 * per_row


def test_a_failed_write_becomes_one_line_with_the_fix_and_other_errors_pass(tmp_path):
    path = tmp_path / "s.zarr"
    with make_store(path) as store:
        with pytest.raises(FeatcacheError) as err, explain_write_errors(store):
            raise OSError(errno.ENOSPC, "No space left on device")
        assert str(err.value) == f"cannot write {path} (No space left on device); {FIX}"
        with pytest.raises(FeatcacheError, match=r"^cannot write .* \(disk gone\); free disk space"):
            with explain_write_errors(store):
                raise OSError("disk gone")
        with pytest.raises(KeyError), explain_write_errors(store):
            raise KeyError("not a write")


class FullDisk:
    """A raw file whose writes fail with ENOSPC."""

    def __init__(self, raw) -> None:
        self.raw = raw

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.raw, name)


def test_a_write_that_the_hdf5_file_dropped_is_raised_after_the_block(tmp_path):
    path = tmp_path / "s.h5"
    with make_store(path) as store:
        raise_if_write_failed(store)  # nothing failed yet
        guard = store.backend.guard
        guard.raw = FullDisk(guard.raw)
        with pytest.raises(FeatcacheError, match=rf"^cannot write {path} \(No space left on device\); free disk"):
            with explain_write_errors(store):
                store.backend["masks"][0:2] = np.ones((2, 32, 32), np.uint8)
                store.backend.flush()  # no error here: the guard kept it
        with pytest.raises(OSError, match="No space left"):
            raise_if_write_failed(store)
        guard.raw = guard.raw.raw
    with make_store(tmp_path / "s.zarr") as zarr_store:
        raise_if_write_failed(zarr_store)  # no guard: nothing to raise
