"""Damaged stores: a changed bit or a lost chunk is never read silently; verify --repair and the same extract
restore exactly what a clean run writes."""

import shutil
from pathlib import Path

import h5py
import pytest

from featcache.core.errors import FeatcacheError
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.store.integrity import CHECKSUM, MISSING
from featcache.store.verify import verify_store
from tests.helpers import CPU, STORE_ARRAYS, assert_same_store, extract_config, table_rows

SHARD = 4  # extract_config's shard size: 24 samples in 6 blocks; the test split is rows 18-23


def copy_store(source: Path, target: Path) -> Path:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)
    return target


def flip_bit(path: Path, array: str, row: int) -> None:
    """Change one bit inside the data of the chunk (Zarr: the shard) holding ``row`` of ``array``, store closed."""
    if path.suffix == ".zarr":
        with FeatureStore.open(path, allow_incomplete=True) as store:
            ndim = store.backend[array].ndim
        chunk = path / array / "c" / str(row // SHARD) / "/".join(["0"] * (ndim - 1))
        data = bytearray(chunk.read_bytes())
        index = 16 * SHARD + 4 if ndim > 1 else 0  # a shard ends with its index (offset, length per chunk + crc32c)
        data[(len(data) - index) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
        return
    with h5py.File(path, "r") as f:
        dataset = f[array]
        first = row - row % dataset.chunks[0]
        info = dataset.id.get_chunk_info_by_coord((first, *[0] * (dataset.ndim - 1)))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([byte ^ 0x10]))


def stored_chunks(path: Path) -> dict[str, bytes]:
    """Every stored chunk's bytes, by array and position (Zarr: the chunk files; HDF5: the raw chunks)."""
    if path.suffix == ".zarr":
        files = (p for name in STORE_ARRAYS for p in (path / name / "c").rglob("*") if p.is_file())
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in files}
    out = {}
    with h5py.File(path, "r") as f:
        for name in STORE_ARRAYS:
            dataset = f[name]
            for i in range(dataset.id.get_num_chunks()):
                offset = dataset.id.get_chunk_info(i).chunk_offset
                out[f"{name}{offset}"] = dataset.id.read_direct_chunk(offset)[1]
    return out


def assert_same_chunks(a: Path, b: Path) -> None:
    """The same values and the same bytes in every stored chunk."""
    assert_same_store(a, b)
    assert stored_chunks(a) == stored_chunks(b)


def test_damage_repaired_and_reextracted_equals_a_clean_run(synth_root, clean_stores, tmp_path, store_suffix):
    reference = clean_stores[store_suffix]
    path = copy_store(reference, tmp_path / f"s{store_suffix}")
    flip_bit(path, "masks", 13)
    flip_bit(path, "written", 22)
    if store_suffix == ".zarr":
        (path / "features" / "c" / "1" / "0" / "0" / "0" / "0").unlink()  # rows 4-7
    else:  # an HDF5 chunk cannot be deleted: a changed bit in the features instead
        flip_bit(path, "features", 5)
    with pytest.raises(FeatcacheError, match="is damaged"):
        FeatureStore.open(path).read("masks")

    found = verify_store(path)
    per_row = store_suffix == ".h5"  # HDF5 chunks hold one sample (1-D arrays: one block)
    expected = {
        ("masks", 13, 14) if per_row else ("masks", 12, 16),
        ("written", 20, 24),
        ("features", 5, 6) if per_row else ("features", 4, 8),
    }
    assert {(d.array, d.start, d.stop) for d in found.damages} == expected
    assert {d.what for d in found.damages} == ({CHECKSUM} if per_row else {CHECKSUM, MISSING})
    assert not found.repaired and "--repair" in found.fix()

    repaired = verify_store(path, repair=True)
    assert repaired.repaired == [(4, 8), (12, 16), (20, 24)] and "same `featcache extract" in repaired.fix()
    assert verify_store(path).clean  # the damaged chunks were cleared: nothing left that fails a read
    with pytest.raises(FeatcacheError, match=r"incomplete \(12/24"):
        FeatureStore.open(path)
    report = extract(extract_config(synth_root, path), ctx=CPU)
    assert report.resumed and report.computed == 12
    assert verify_store(path).clean
    assert_same_chunks(path, reference)


def test_the_same_extract_recomputes_blocks_whose_chunks_were_lost(synth_root, clean_stores, tmp_path):
    """No verify needed for a lost chunk: the listing at resume finds it and the block is computed again."""
    reference = clean_stores[".zarr"]
    path = copy_store(reference, tmp_path / "s.zarr")
    (path / "masks" / "c" / "2" / "0" / "0").unlink()  # rows 8-11
    report = extract(extract_config(synth_root, path), ctx=CPU)
    assert report.resumed and report.computed == SHARD
    assert_same_chunks(path, reference)


@pytest.mark.parametrize(
    ("array", "command"),
    [
        ("features", ["info"]),
        ("written", ["info"]),
        ("masks", ["train-decoder", "--size", "4", "--seeds", "0", "--epochs", "1"]),
        ("images", ["compare-e2e", "--modes", "C", "--sizes", "4", "--seeds", "0", "--epochs", "1"]),
    ],
)
def test_a_flipped_bit_ends_a_reading_command_with_one_line(clean_stores, tmp_path, store_suffix, cli, array, command):
    path = copy_store(clean_stores[store_suffix], tmp_path / f"s{store_suffix}")
    flip_bit(path, array, 20)  # a test-split row: every one of these commands reads it
    result = cli(command[0], path, *command[1:], *(["--out", tmp_path / "out"] if command[0] != "info" else []))
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if "━" not in line]  # progress bars aside
    assert len(lines) == 1, result.stderr[-3000:]
    rows = "row 20" if store_suffix == ".h5" and array != "written" else "rows 20-23"
    assert f"{path} is damaged: {array} {rows} (checksum mismatch)" in lines[0]
    assert f"featcache verify {path} --repair" in lines[0] and "featcache extract" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout and "asyncio" not in result.stderr + result.stdout


def punch_hole(path: Path) -> None:
    """Lose the masks of rows 4-7 while their block stays marked written (HDF5: lose them before they were written)."""
    if path.suffix == ".zarr":
        (path / "masks" / "c" / "1" / "0" / "0").unlink()
        return
    with FeatureStore.open(path, writable=True) as store:
        store.mark_incomplete()
    with h5py.File(path, "r+") as f:
        data = f["masks"][:]
        del f["masks"]  # recreated like the store made it, with rows 4-7 never written
        masks = f.create_dataset(
            "masks", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]), fillvalue=0, fletcher32=True
        )
        masks[:4], masks[8:] = data[:4], data[8:]
    with FeatureStore.open(path, writable=True, allow_incomplete=True) as store:
        store.record.complete = True
        store.save_record()


def test_a_lost_chunk_is_refused_by_info_and_train_decoder_until_repaired(clean_stores, tmp_path, store_suffix, cli):
    path = copy_store(clean_stores[store_suffix], tmp_path / f"s{store_suffix}")
    punch_hole(path)
    for command in (["info"], ["train-decoder", "--size", "4", "--epochs", "1", "--out", tmp_path / "run"]):
        result = cli(command[0], path, *command[1:])
        assert result.returncode == 1 and "complete" not in result.stdout, result.stdout
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert f"{path} is damaged: masks rows 4-7 (missing); run `featcache verify {path} --repair`" in result.stderr
    with FeatureStore.open(path, allow_incomplete=True) as store:
        assert store.damaged_blocks() == [4]

    listed = cli("verify", path)
    assert listed.returncode == 1 and table_rows(listed.stdout) == [["masks", "rows 4-7", MISSING]], listed.stdout
    assert len(listed.stderr.strip().splitlines()) == 1 and "--repair" in listed.stderr
    repaired = cli("verify", path, "--repair")
    assert repaired.returncode == 0 and "marked unwritten" in repaired.stdout, repaired.stderr
    info = cli("info", path)
    assert info.returncode == 0 and "False (20/24 written)" in info.stdout


def test_damaged_ids_call_for_a_new_extraction(clean_stores, tmp_path, store_suffix, cli):
    path = copy_store(clean_stores[store_suffix], tmp_path / f"s{store_suffix}")
    flip_bit(path, "ids", 0)
    with FeatureStore.open(path) as store, pytest.raises(FeatcacheError, match=r"ids rows 0-3 .*--overwrite"):
        _ = store.ids
    result = cli("verify", path, "--repair")
    assert result.returncode == 1 and table_rows(result.stdout) == [["ids", "rows 0-3", CHECKSUM]], result.stdout
    assert f"--out {path} --overwrite" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with FeatureStore.open(path) as store:
        assert store.record.complete and store.written().all()  # nothing else was damaged: nothing unwritten
