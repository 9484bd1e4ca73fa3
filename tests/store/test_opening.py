"""featcache.store.opening: the store an extraction writes into: created, resumed, refused or replaced, decided on
rank 0 and told to the others."""

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import Sample, SampleIndex
from featcache.store import opening
from featcache.store.errors import NotAStoreError
from featcache.store.extract_config import ExtractConfig
from featcache.store.opening import open_for_extraction
from featcache.store.schema import ExtractionRecord
from tests.helpers import fill_store, make_store, tiny_identity

SPLITS = ["train"] * 3 + ["val", "test"]
INDEX = SampleIndex(
    root=Path("data"),
    layout="folders",
    samples=[
        Sample(f"ISIC_{i:07d}", Path(f"{i}.jpg"), Path(f"{i}.png"), SPLITS[i], (2 * i, 2 * i + 1)) for i in range(5)
    ],
    split_note="",
    split_config=None,
)
#: What opening needs of an encoder: 8 channels on 16 px patches, so a 2x2 grid at 32 px (as `make_store`).
ENCODER = SimpleNamespace(patch_size=16, width=8)


class Ranks:
    """Rank ``rank`` of two, its broadcasts recorded; ``sent`` is what rank 0 broadcast."""

    def __init__(self, rank: int = 0, sent: str | None = None) -> None:
        self.rank, self.sent, self.broadcasts = rank, sent, []

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast_object(self, obj):
        self.broadcasts.append(obj)
        return obj if self.is_main else self.sent


def open_store(path, *, identity=None, ranks=None, **overrides):
    cfg = ExtractConfig(data=Path("data"), out=str(path), image_size=32, views="flips", shard_size=2, **overrides)
    return open_for_extraction(
        cfg, identity=identity or tiny_identity(), index=INDEX, encoder=ENCODER, ranks=ranks or Ranks()
    )


def test_a_new_store_holds_the_index_and_the_other_ranks_hear_no_refusal(tmp_path, store_suffix):
    ranks = Ranks()
    store, resumed = open_store(tmp_path / f"s{store_suffix}", ranks=ranks)
    with store:
        assert not resumed and ranks.broadcasts == [""]
        assert store.ids == [s.id for s in INDEX.samples] and store.splits.tolist() == SPLITS
        assert store.orig_hw().tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
        assert (store.record.width, store.record.grid, store.shard_size) == (8, [2, 2], 2)
        assert not store.written().any() and not store.record.complete


def test_a_store_of_the_same_extraction_is_resumed(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path) as store:
        fill_store(store)
    store, resumed = open_store(path)
    with store:
        assert resumed and store.writable and store.written().all()


def test_written_blocks_that_lost_chunks_make_a_complete_store_incomplete_again(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    with make_store(path) as store:
        fill_store(store)
        store.mark_complete(ExtractionRecord())
        store.backend.delete_chunks("features", 2, 4)
    store, resumed = open_store(path)
    with store:
        assert resumed and not store.record.complete and store.damaged_blocks() == [2]
    assert "s.zarr: 1 written blocks lost chunks (rows from 2); computing them again" in capsys.readouterr().err


def test_a_store_of_another_extraction_is_refused_on_every_rank(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path).close()
    other = tiny_identity(dtype="float32")
    ranks = Ranks()
    with pytest.raises(FeatcacheError) as err:
        open_store(path, identity=other, ranks=ranks)
    message = str(err.value)
    assert message.startswith(f"{path} holds another extraction (dtype: float16 -> float32")
    assert message.endswith("pass --overwrite to replace it or choose another --out")
    assert ranks.broadcasts == [message]
    with pytest.raises(FeatcacheError) as heard:
        open_store(path, identity=other, ranks=Ranks(rank=1, sent=message))
    assert str(heard.value) == message


def test_another_rank_opens_the_store_rank_0_made(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path).close()
    ranks = Ranks(rank=1, sent="")
    store, resumed = open_store(path, ranks=ranks)
    with store:
        assert resumed and store.writable and store.n == 5 and ranks.broadcasts == [None]


def test_overwrite_replaces_a_store_of_another_extraction(tmp_path, store_suffix):
    path = tmp_path / f"s{store_suffix}"
    with make_store(path, dtype="float32") as old:
        fill_store(old)
    store, resumed = open_store(path, overwrite=True)
    with store:
        assert not resumed and store.record.dtype == "float16" and not store.written().any()


def test_what_is_not_a_store_is_never_resumed_nor_overwritten(tmp_path):
    folder = tmp_path / "s.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(NotAStoreError, match=r"s\.zarr is there and is not a featcache store; choose another --out"):
        open_store(folder)
    with pytest.raises(FeatcacheError, match=r"s\.zarr exists and is not a featcache store; --overwrite only replaces"):
        open_store(folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "mine"


def test_a_store_that_cannot_be_created_is_removed_and_explained(tmp_path, monkeypatch, store_suffix):
    (tmp_path / "file").write_text("")
    with pytest.raises(
        FeatcacheError, match=r"^cannot create .*file/s\.(zarr|h5) \(Not a directory\); free some space"
    ):
        open_store(tmp_path / "file" / f"s{store_suffix}")

    def disk_full(store):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(opening, "raise_if_write_failed", disk_full)
    path = tmp_path / f"s{store_suffix}"
    with pytest.raises(FeatcacheError) as err:
        open_store(path)
    assert str(err.value) == (
        f"cannot create {path} (No space left on device); free some space or choose another --out, or fix its "
        "permissions"
    )
    assert not path.exists()  # what the failed creation left is gone


def test_a_disk_without_room_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import featcache.store.room as room

    monkeypatch.setattr(room.shutil, "disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(FeatcacheError, match=r"needs up to .* for 5 samples but .* has 0\.00 MiB free; free some"):
        open_store(tmp_path / "s.zarr")
    assert list(tmp_path.iterdir()) == []
