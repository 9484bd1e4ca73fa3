"""Issue 20, as a hostile user tries it: damage above the chunks (array metadata, an HDF5 chunk index, object headers,
the provenance), a repair that must not spread damage, live writers, locked run folders, non-finite numbers, encoder
mismatches and Ctrl-C with decoding workers. Every reproduction of the issue is kept here; the mechanisms have their
own tests beside their modules (layout_check, hdf5_superblock, live_lock, run_lock, finite, workers)."""

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.models import build_encoder
from featcache.store import FeatureStore
from featcache.store import hdf5_backend as hdf5_backend
from featcache.store.extract import extract
from featcache.store.info import store_info
from featcache.store.schema import SEAL
from featcache.store.verify import verify_store
from featcache.train import train_decoder
from tests.helpers import (
    CPU,
    MICRO_EXTRACT,
    assert_same_store,
    extract_config,
    one_line_error,
    quick_sweep,
    run_cli,
    run_main,
    table_rows,
)
from tests.store.test_verify import flip_bit, stored_chunks

HOST = socket.gethostname()
RAW = ("IndexError", "KeyError", "AttributeError", "RuntimeError", "Traceback")


def copy_store(source: Path, target: Path) -> Path:
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return target


@pytest.fixture
def store(clean_stores, tmp_path, store_suffix) -> Path:
    """A copy of the clean store (24 samples, blocks of 4, flip views) of each backend, to damage."""
    return copy_store(clean_stores[store_suffix], tmp_path / f"s{store_suffix}")


@pytest.fixture(scope="module")
def format2_h5(synth_root, tmp_path_factory) -> Path:
    """An HDF5 store as featcache wrote them before format 3: the earliest HDF5 file format (no checksum on its chunk
    index, groups in local heaps and symbol-table nodes) and an unsealed provenance of format 2."""
    path = tmp_path_factory.mktemp("format2") / "old.h5"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hdf5_backend, "H5_LIBVER", ("earliest", "latest"))
        extract(extract_config(synth_root, path), ctx=CPU)
    with h5py.File(path, "r+") as f:
        meta = json.loads(f.attrs["featcache"])
        meta["format_version"] = 2
        del meta[SEAL]
        f.attrs["featcache"] = json.dumps(meta)
    return path


def edit_zarr_json(path: Path, array: str, change) -> None:
    meta = json.loads((path / array / "zarr.json").read_text())
    change(meta)
    (path / array / "zarr.json").write_text(json.dumps(meta))


def move_chunk(path: Path, array: str, row: int, by: int = 4096) -> int:
    """Move the address of ``row``'s chunk in the HDF5 chunk index by ``by`` bytes (the entry found by its bytes);
    returns where in the file the entry is."""
    with h5py.File(path, "r") as f:
        dataset = f[array]
        address = dataset.id.get_chunk_info_by_coord((row, *[0] * (dataset.ndim - 1))).byte_offset
    data = bytearray(path.read_bytes())
    entry = struct.pack("<Q", address - hdf5_backend.H5_USERBLOCK)  # HDF5 addresses start after the user block
    assert data.count(entry) == 1
    at = data.index(entry)
    data[at : at + 8] = struct.pack("<Q", address - hdf5_backend.H5_USERBLOCK + by)
    path.write_bytes(bytes(data))
    return at


def add_at(path: Path, at: int, by: int) -> None:
    """Add ``by`` to the 8-byte address at ``at`` of the file."""
    data = bytearray(path.read_bytes())
    data[at : at + 8] = struct.pack("<Q", struct.unpack_from("<Q", data, at)[0] + by)
    path.write_bytes(bytes(data))


def flip_after(path: Path, marker: bytes, offset: int, occurrence: int | None = 0) -> None:
    """Flip one bit ``offset`` bytes after the ``occurrence``-th ``marker`` in the file (a metadata block's signature,
    a provenance key); after every one with None (rewritten attributes leave stale copies in an HDF5 file)."""
    data = bytearray(path.read_bytes())
    starts = [m.start() for m in re.finditer(re.escape(marker), data)]
    for start in starts if occurrence is None else [starts[occurrence]]:
        data[start + offset] ^= 0x04
    path.write_bytes(bytes(data))


def assert_one_clean_line(result, *fragments: str, code: int = 1) -> str:
    line = one_line_error(result, *fragments, code=code)
    assert not any(raw in result.stderr for raw in RAW), result.stderr
    return line


# ----- 1. metadata that breaks readers ---------------------------------------------------------------------------
def test_a_shorter_zarr_shape_is_damage_to_verify_extract_and_readers(clean_stores, synth_root, tmp_path, capsys):
    store = copy_store(clean_stores[".zarr"], tmp_path / "s.zarr")
    edit_zarr_json(store, "features", lambda m: m.update(shape=[16, *m["shape"][1:]]))
    listed = run_main(capsys, "verify", store)
    assert listed.returncode == 1 and table_rows(listed.stdout)[0][:2] == ["features", "all rows"], listed.stdout
    assert "metadata: shape [16, 4, 32, 4, 4], the provenance implies [24, 4, 32, 4, 4]" in listed.stdout
    assert_one_clean_line(listed, f"rewrite the store with `featcache extract ... --out {store} --overwrite`")
    refused = run_main(capsys, "extract", synth_root, "--out", store, *MICRO_EXTRACT)
    assert_one_clean_line(refused, f"{store} is damaged: features metadata (shape [16, ", "--overwrite")
    reader = run_main(capsys, "train-decoder", store, "--size", "4", "--epochs", "1", "--out", tmp_path / "run")
    assert_one_clean_line(reader, f"{store} is damaged: features metadata", "--overwrite")
    assert run_main(capsys, "extract", synth_root, "--out", store, "--overwrite", *MICRO_EXTRACT).returncode == 0
    assert verify_store(store).clean


def test_a_float32_data_type_is_never_repaired_or_resumed_over(clean_stores, synth_root, tmp_path, capsys):
    store = copy_store(clean_stores[".zarr"], tmp_path / "s.zarr")
    edit_zarr_json(store, "features", lambda m: m.update(data_type="float32"))
    repair = run_main(capsys, "verify", store, "--repair")
    assert_one_clean_line(repair, "--overwrite")
    with FeatureStore.open(store, allow_incomplete=True, check_layout=False) as opened:
        assert opened.record.complete and opened.written().all()  # nothing was unwritten
    resumed = run_main(capsys, "extract", synth_root, "--out", store, *MICRO_EXTRACT)
    assert_one_clean_line(resumed, "features metadata (dtype float32, the provenance implies float16)")


# ----- 2. a repair that must not spread damage -------------------------------------------------------------------
def test_a_moved_hdf5_chunk_address_is_refused_not_repaired(clean_stores, synth_root, tmp_path, capsys):
    """Format 3: the chunk index carries a checksum, so the moved address is index damage, never chunk damage."""
    store = copy_store(clean_stores[".h5"], tmp_path / "s.h5")
    masks = {k: v for k, v in stored_chunks(store).items() if k.startswith("masks")}
    entry = move_chunk(store, "features", 17)
    listed = verify_store(store)
    assert [(d.array, d.what) for d in listed.damages] == [("features", "metadata")]
    repair = run_main(capsys, "verify", store, "--repair")
    assert_one_clean_line(
        repair, "features", f"rewrite the store with `featcache extract ... --out {store} --overwrite`"
    )
    assert_one_clean_line(run_main(capsys, "extract", synth_root, "--out", store, *MICRO_EXTRACT), "--overwrite")
    add_at(store, entry, -4096)  # put back: the refusals above wrote nothing
    assert {k: v for k, v in stored_chunks(store).items() if k.startswith("masks")} == masks
    assert verify_store(store).clean


def test_an_old_hdf5_store_whose_chunk_index_cannot_be_proven_is_not_repaired(format2_h5, tmp_path, capsys):
    """Format 2: a moved address fails like a changed bit, and a repair would have overwritten intact masks."""
    store = copy_store(format2_h5, tmp_path / "old.h5")
    masks = {k: v for k, v in stored_chunks(store).items() if k.startswith("masks")}
    move_chunk(store, "features", 17)
    assert any(d.array == "features" for d in verify_store(store).damages)
    repair = run_main(capsys, "verify", store, "--repair")
    assert_one_clean_line(repair, "has no checksum on its chunk index", "--overwrite")
    assert {k: v for k, v in stored_chunks(store).items() if k.startswith("masks")} == masks
    with FeatureStore.open(store) as opened:
        assert opened.record.complete  # not marked for a resume that would write through the index


def zarr_shard(array: str, block: int):
    def lose(path: Path) -> None:
        shard = path / array / "c" / str(block)
        (shutil.rmtree if shard.is_dir() else os.remove)(shard)

    return lose


def zarr_meta(array: str, change):
    return lambda path: edit_zarr_json(path, array, change)


#: (name, damage, recomputable): every damage these tests make, per backend; ``recomputable``: verify --repair and the
#: same extract restore the clean store; otherwise one of them refuses (the fix: --overwrite).
DAMAGES = {
    ".zarr": [
        *[
            (f"bit {a}", lambda p, a=a: flip_bit(p, a, 13), a not in ("ids", "split", "orig_hw"))
            for a in ("features", "masks", "images", "written", "ids", "split", "orig_hw")
        ],
        ("lost features shard", zarr_shard("features", 1), True),
        ("lost written chunk", zarr_shard("written", 2), True),
        ("shape", zarr_meta("features", lambda m: m.update(shape=[16, *m["shape"][1:]])), False),
        ("dtype", zarr_meta("features", lambda m: m.update(data_type="float32")), False),
        ("no crc32c", zarr_meta("masks", lambda m: m["codecs"][0]["configuration"]["codecs"].pop()), False),
        ("provenance n", zarr_meta(".", lambda m: m["attributes"]["featcache"].update(n=25)), False),
        ("array json", lambda p: (p / "written" / "zarr.json").write_text('{"zarr_format": 3, "node'), False),
    ],
    ".h5": [
        *[
            (f"bit {a}", lambda p, a=a: flip_bit(p, a, 13), a not in ("ids", "split", "orig_hw"))
            for a in ("features", "masks", "images", "written", "ids", "split", "orig_hw")
        ],
        ("moved chunk", lambda p: move_chunk(p, "features", 17), False),
        ("object header", lambda p: flip_after(p, b"OHDR", 40, occurrence=-1), False),
        ("chunk index block", lambda p: flip_after(p, b"FADB", 24), False),
        ("provenance byte", lambda p: flip_after(p, b'"dataset_root"', 20, occurrence=None), False),
        ("provenance key", lambda p: flip_after(p, b"weights_sha256", 3, occurrence=None), False),
    ],
}
CASES = [(suffix, *case) for suffix, cases in DAMAGES.items() for case in cases]


@pytest.mark.parametrize(("suffix", "name", "damage", "recomputable"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_repair_then_extract_finishing_means_verify_passes(
    clean_stores, synth_root, tmp_path, suffix, name, damage, recomputable
):
    """Whatever the damage: after verify --repair and the same extract, an extract that finishes left a store that
    verify passes, the clean run's; what cannot be recomputed is refused by one of them, in one line."""
    store = copy_store(clean_stores[suffix], tmp_path / f"s{suffix}")
    damage(store)
    outcomes = []
    for step in (lambda: verify_store(store, repair=True), lambda: extract(extract_config(synth_root, store), ctx=CPU)):
        try:
            report = step()
            outcomes.append(getattr(report, "refusal", "") == "" and not getattr(report, "unrepairable", []))
        except FeatcacheError as exc:
            assert "\n" not in str(exc) and "--overwrite" in str(exc) or "verify" in str(exc), str(exc)
            outcomes.append(False)
    if outcomes[-1]:  # the extract finished
        assert verify_store(store).clean
        assert_same_store(store, clean_stores[suffix])
    assert all(outcomes) == recomputable, outcomes


# ----- 3. HDF5 metadata damage: one line, the store named, the fix -----------------------------------------------
@pytest.mark.parametrize(
    ("marker", "offset"), [(b"HEAP", 20), (b"SNOD", 12), (b"TREE", 24), (b"weights_sha256", 3)], ids=str
)
def test_old_hdf5_metadata_damage_is_one_line(format2_h5, tmp_path, capsys, marker, offset):
    """The issue's raw errors (bad heap free list, NoneType.chunks, KeyError) on the format the issue met them in."""
    store = copy_store(format2_h5, tmp_path / "old.h5")
    flip_after(store, marker, offset, occurrence=None if marker == b"weights_sha256" else -1)
    for command in (["info"], ["train-decoder", "--size", "4", "--epochs", "1", "--out", tmp_path / "run"]):
        result = run_main(capsys, command[0], store, *command[1:])
        if result.returncode == 0:
            continue  # a bit HDF5 never reads for this: nothing read wrong
        assert_one_clean_line(result, str(store))
        assert "--overwrite" in result.stderr or "verify" in result.stderr, result.stderr


@pytest.mark.parametrize("marker", [b"OHDR", b"FAHD", b"FADB", b"OCHK", b"\x89HDF"])
def test_every_flipped_metadata_byte_ends_as_one_featcache_line(clean_stores, tmp_path, marker):
    """A sweep over the metadata blocks of a format-3 file: no reader raises anything but the one-line error."""
    data = clean_stores[".h5"].read_bytes()
    store = tmp_path / "s.h5"

    def read_features() -> None:
        with FeatureStore.open(store) as opened:
            opened.read("features")

    for start in [m.start() for m in re.finditer(re.escape(marker), data)][:6]:
        for offset in (5, 9, 17, 25, 40):
            damaged = bytearray(data)
            damaged[start + offset] ^= 0x04
            store.write_bytes(bytes(damaged))
            for read in (read_features, lambda: store_info(store), lambda: verify_store(store)):
                try:
                    read()  # verify lists what it finds
                except FeatcacheError as exc:
                    assert "\n" not in str(exc) and str(store) in str(exc), str(exc)


# ----- 4. a live extraction is not called interrupted ------------------------------------------------------------
def test_a_reader_of_a_live_extraction_is_told_to_wait(synth_root, tmp_path):
    out, seen = tmp_path / "s.zarr", []

    def read_meanwhile(start: int, stop: int) -> None:
        if not seen:
            seen.append(run_cli("train-decoder", out, "--size", "4", "--epochs", "1", "--out", tmp_path / "run"))

    extract(extract_config(synth_root, out), ctx=CPU, on_block=read_meanwhile)
    line = assert_one_clean_line(seen[0], f"{out} is being written by pid {os.getpid()} on {HOST} since ")
    assert line.endswith("if that run is gone") and "wait for it" in line and "interrupted" not in line


# ----- 5. run folders are locked ---------------------------------------------------------------------------------
def test_a_second_train_decoder_into_the_same_folder_is_refused(micro_store, tmp_path, cli):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps({"host": HOST, "pid": holder.pid, "since": "2026-05-01"}))
        result = cli("train-decoder", micro_store, "--size", "4", "--epochs", "1", "--out", tmp_path / "run")
        assert_one_clean_line(
            result, f"the run folder {tmp_path / 'run'} is being written by pid {holder.pid} on {HOST}"
        )
        assert f"wait for it, or delete {tmp_path / 'run.lock'} if that run is gone" in result.stderr
        assert not (tmp_path / "run").exists()
    finally:
        holder.kill()
        holder.wait()


# ----- 6. messages -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_numbers_are_usage_errors(micro_store, tmp_path, capsys, value):
    for option in ("--lr", "--weight-decay", "--checkpoint-seconds"):
        result = run_main(capsys, "train-decoder", micro_store, "--size", "4", option, value, "--out", tmp_path / "r")
        assert_one_clean_line(result, option, "finite", code=2)
    assert not (tmp_path / "r").exists()


def test_an_encoder_mismatch_names_the_file_and_both_fixes(synth_root, tmp_path, capsys):
    enc, wrong = tmp_path / "enc0.pt", tmp_path / "enc1.pt"
    torch.save(build_encoder("vit_micro", "random", seed=0).state_dict(), enc)
    torch.save(build_encoder("vit_micro", "random", seed=1).state_dict(), wrong)
    store = tmp_path / "s.zarr"
    extract(extract_config(synth_root, store, encoder=str(enc), image_size=32, views="identity"), ctx=CPU)
    run = tmp_path / "run"
    train_decoder(quick_sweep(store, run, size=4, seeds=(0,), epochs=1, augment="none"), ctx=CPU)
    image = next((synth_root / "ISIC-2017_Test_v2_Data").glob("*.jpg"))
    result = run_main(capsys, "predict", run, image, "--out", tmp_path / "p", "--encoder", wrong)
    assert_one_clean_line(
        result,
        f"--encoder {wrong} holds other weights",
        f"drop --encoder to rebuild it from {enc.resolve()}",
        "or pass the weights file the store was extracted with",
    )
    shutil.copyfile(wrong, enc)  # the recorded file replaced by a wrong one
    result = run_main(capsys, "predict", run, image, "--out", tmp_path / "p")
    assert_one_clean_line(result, f"the weights file {enc.resolve()} has other weights", "it was replaced", "--encoder")
    result = run_main(capsys, "train-decoder", store, "--size", "4", "--encoder", wrong, "--out", tmp_path / "r2")
    assert_one_clean_line(result, str(wrong.resolve()), "drop --encoder", "pass the weights file the store was")


# ----- 7. Ctrl-C with decoding workers ---------------------------------------------------------------------------
def ctrl_c_extract(data: Path, out: Path, delay: float) -> subprocess.CompletedProcess:
    """``extract --workers 2`` in a session of its own, SIGINT to the whole group (as Ctrl-C sends it) ``delay``
    seconds after its decoding workers exist."""
    command = [sys.executable, "-m", "featcache", "extract", data, "--out", out, *MICRO_EXTRACT[:-2], "--workers", "2"]
    proc = subprocess.Popen(
        list(map(str, command)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(children) >= 2:
                break
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def assert_ctrl_c_is_clean(clean_stores, synth_root, tmp_path, delays) -> None:
    """Ctrl-C at each of ``delays``, every run resuming the last one's store: each ends with "interrupted" alone and
    exit 130, and the store they leave resumes to the clean run's."""
    out = tmp_path / "s.zarr"
    for delay in delays:
        result = ctrl_c_extract(synth_root, out, delay)
        if result.returncode == 0:
            break  # it finished before the signal came
        assert result.returncode == 130, result.stderr
        assert result.stderr.splitlines()[-1] == "interrupted" and "Traceback" not in result.stderr, result.stderr
    extract(extract_config(synth_root, out), ctx=CPU)
    assert_same_store(out, clean_stores[".zarr"])


@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to find the workers")
def test_ctrl_c_with_decoding_workers_prints_interrupted_only(clean_stores, synth_root, tmp_path):
    assert_ctrl_c_is_clean(clean_stores, synth_root, tmp_path, [0.0, 0.15, 0.4])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pgrep") is None, reason="needs pgrep to find the workers")
def test_ctrl_c_with_decoding_workers_many_times(clean_stores, synth_root, tmp_path):
    assert_ctrl_c_is_clean(clean_stores, synth_root, tmp_path, [random.Random(i).uniform(0, 1.0) for i in range(12)])
