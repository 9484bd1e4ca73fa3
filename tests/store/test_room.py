"""A full disk or a file-size limit (`ulimit -f`) during extraction: a refusal before the work, one line and
exit 1 when room runs out mid-run, never a segfault, and a store that the next run resumes or replaces."""

import os
import resource
import subprocess
import sys

import pytest

from featcache.core.errors import FeatcacheError
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.store.room import Room, check_room
from tests.helpers import CPU, MICRO_EXTRACT, assert_same_store, extract_config, one_line_error

OPTIONS = (*MICRO_EXTRACT, "--device", "cpu")

# Runs the extract command line in this process after arranging for its file-size limit to drop to
# what the store holds when the extraction reaches sample START: the disk filling up under a running
# extraction (another job writing to it). MOMENT ``between`` drops it before the block's room check,
# ``during`` inside the block's write, after the check passed (the race the check cannot close).
DRIVER = """
import os, resource, sys
from featcache import cli
from featcache.store import extract_config, feature_store as store, writing

moment, start_at = sys.argv[1], int(sys.argv[2])
# One writer thread: the limit is process-wide, so with several it would also cut another block's write in
# flight, and which error ends the run would be a matter of timing.
extract_config.ExtractConfig.writer_threads = lambda self: 1

def drop_limit(out):
    # HDF5: the file cannot grow at all; Zarr: no new file can take more than 1 KiB (a shard is bigger).
    limit = os.path.getsize(out) if out.endswith(".h5") else 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

if moment == "between":
    original = writing.write_or_explain
    def patched(s, start, rows):
        if start == start_at:
            drop_limit(str(s.path))
        return original(s, start, rows)
    writing.write_or_explain = patched
else:
    original = store.FeatureStore.write_block
    def patched(self, start, *args, **kwargs):
        if start == start_at:
            drop_limit(str(self.path))
        return original(self, start, *args, **kwargs)
    store.FeatureStore.write_block = patched
cli.main(sys.argv[3:])
"""


def run(args: list[str], limit: int | None = None, driver: list[str] | None = None) -> subprocess.CompletedProcess:
    """``featcache ARGS`` in a fresh process, under a file-size limit of ``limit`` bytes (``ulimit -f``) if given."""

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    head = ["-c", DRIVER, *driver] if driver else ["-m", "featcache"]
    return subprocess.run(
        [sys.executable, *head, *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec if limit is not None else None,
        env={**os.environ, "COLUMNS": "200"},
    )


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed run, checked to be clean: no crash, the rest of stderr the progress bar."""
    assert "Segmentation" not in proc.stderr, proc.stderr
    rest = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("error:")]
    assert all(line.startswith("extract ") for line in rest), proc.stderr
    return one_line_error(proc)


def test_a_store_that_cannot_fit_is_refused_before_any_work(synth_root, tmp_path, store_suffix):
    out = tmp_path / f"s{store_suffix}"
    # 32 KiB: less than one 4-sample shard of 64 px images (48 KiB), and than the HDF5 store.
    line = error_line(run(["extract", synth_root, "--out", out, *OPTIONS], limit=32 * 1024))
    assert f"{out} needs files of up to" in line and "MiB" in line and "at most 0.03 MiB (`ulimit -f`)" in line
    assert "raise that limit" in line
    assert not out.exists()


def test_the_estimate_is_an_upper_bound(synth_root, tmp_path, store_suffix, clean_stores):
    """A file-size limit equal to the estimate lets the extraction finish: no write needs more than it says."""
    from featcache.store.room import room_needed, sample_bytes

    out = tmp_path / f"s{store_suffix}"
    room = room_needed(
        "hdf5" if store_suffix == ".h5" else "zarr",
        sample_bytes(64, 4, 32, grid=(4, 4), dtype="float16"),
        24,
        shard_size=4,
        new_store=True,
    )
    proc = run(["extract", synth_root, "--out", out, *OPTIONS], limit=room.per_file)
    assert proc.returncode == 0, proc.stderr
    assert_same_store(out, clean_stores[store_suffix])


def test_the_disk_check_names_the_figures_and_the_fix(tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=3 * 2**20))
    with pytest.raises(
        FeatcacheError,
        match=rf"^{tmp_path}/s.zarr needs up to 2.0 GiB for 24 samples but {tmp_path} "
        r"has 3.00 MiB free; free it$",
    ):
        check_room(str(tmp_path / "s.zarr"), Room(2 * 2**30, 2**20), "24 samples", fix="free it")
    check_room(str(tmp_path / "s.zarr"), Room(3 * 2**20, 2**20), "24 samples", fix="free it")
    check_room("s3://bucket/s.zarr", Room(2**50, 2**50), "24 samples", fix="free it")  # not checked: a URL


@pytest.mark.parametrize("moment", ["between", "during"])
def test_room_that_runs_out_mid_run_stops_cleanly_and_the_rerun_resumes(
    synth_root, tmp_path, store_suffix, clean_stores, moment
):
    out = tmp_path / f"s{store_suffix}"
    line = error_line(run(["extract", synth_root, "--out", out, *OPTIONS], driver=[moment, "8"]))
    if moment == "between":  # the room check refuses the block before any of it is written
        assert f"{out} needs files of up to" in line and "raise that limit, then run the same command again" in line
    else:
        assert f"cannot write {out} (File too large)" in line and "the blocks already written are kept" in line
    with FeatureStore.open(out, allow_incomplete=True) as store:
        assert store.written().sum() == 8 and not store.record.complete
    proc = run(["extract", synth_root, "--out", out, *OPTIONS])
    assert proc.returncode == 0 and f"resumed {out}: 16 of 24 samples" in proc.stdout, proc.stderr
    assert_same_store(out, clean_stores[store_suffix])


def test_an_hdf5_store_left_unreadable_asks_for_overwrite_which_replaces_it(synth_root, tmp_path, clean_stores):
    out = tmp_path / "s.h5"
    extract(extract_config(synth_root, out), ctx=CPU)
    # What an interrupted flush can leave: a superblock that promises more file than there is.
    os.truncate(out, out.stat().st_size // 2)
    line = error_line(run(["extract", synth_root, "--out", out, *OPTIONS]))
    assert line.startswith(f"error: the store at {out} was left unreadable by an interrupted write")
    assert line.endswith("pass --overwrite to `featcache extract` to start it again")
    proc = run(["extract", synth_root, "--out", out, *OPTIONS, "--overwrite"])
    assert proc.returncode == 0, proc.stderr
    assert_same_store(out, clean_stores[".h5"])


def test_overwrite_still_refuses_an_unreadable_file_that_is_not_ours(synth_root, tmp_path):
    out = tmp_path / "s.h5"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    line = error_line(run(["extract", synth_root, "--out", out, *OPTIONS, "--overwrite"]))
    assert "is not a featcache store" in line and out.read_bytes().startswith(b"\x89HDF")
