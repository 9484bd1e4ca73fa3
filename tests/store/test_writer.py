"""The writer threads of `extract`: the same bytes as one thread, a failed write that ends in one line on the
calling thread and leaves a store that resumes to the uninterrupted one, and the pinned copies back from CUDA."""

import errno
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models.spec import build_encoder
from featcache.store.encode import encode_views
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.store.writer import Block, BlockWriter
from tests.helpers import CPU, extract_config

ARRAYS = ("ids", "split", "orig_hw", "images", "masks", "features", "written")


def stored_chunks(path: Path) -> dict[str, bytes]:
    """Every stored chunk, compressed and checksummed as on disk (Zarr: each shard file; HDF5: each raw chunk)."""
    if path.suffix == ".zarr":
        return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file() and "/c/" in str(p)}
    out = {}
    with h5py.File(path, "r") as f:
        for name, dataset in f.items():
            for i in range(dataset.id.get_num_chunks()):
                offset = dataset.id.get_chunk_info(i).chunk_offset
                out[f"{name}{offset}"] = dataset.id.read_direct_chunk(offset)[1]
    return out


def assert_same_bytes(a: Path, b: Path) -> None:
    with FeatureStore.open(a) as left, FeatureStore.open(b) as right:
        for name in ARRAYS:
            assert np.array_equal(left.read(name), right.read(name)), name
    chunks_a, chunks_b = stored_chunks(a), stored_chunks(b)
    assert chunks_a.keys() == chunks_b.keys() and len(chunks_a) > 6
    for key in chunks_a:
        assert chunks_a[key] == chunks_b[key], key


@pytest.mark.parametrize("writers", [1, 3])
def test_writer_threads_store_the_same_bytes_as_one(synth_root, tmp_path, store_suffix, writers):
    if store_suffix == ".h5" and writers > 1:
        with pytest.raises(OptionError, match="HDF5 store is written by one thread"):
            extract(extract_config(synth_root, tmp_path / "x.h5", writers=writers), ctx=CPU)
        return
    one, several = tmp_path / f"one{store_suffix}", tmp_path / f"several{store_suffix}"
    extract(extract_config(synth_root, one, writers=1, batch_size=4), ctx=CPU)
    # Blocks of 4 in batches of 3: a block's features are copied into its buffer from two batches.
    report = extract(extract_config(synth_root, several, writers=writers), ctx=CPU)
    assert report.computed == 24
    assert_same_bytes(one, several)


def fail_second_block(monkeypatch, suffix: str) -> list[int]:
    """Make the backend's assignment of the features of rows 4..7 (the second block) raise ENOSPC, once; returns
    the ids of the threads that wrote features."""
    threads: list[int] = []
    cls = zarr.Array if suffix == ".zarr" else h5py.Dataset
    original = cls.__setitem__

    def setitem(self, key, value):
        if self.ndim == 5:
            threads.append(threading.get_ident())
            if isinstance(key, slice) and key.start == 4:
                monkeypatch.setattr(cls, "__setitem__", original)
                raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(cls, "__setitem__", setitem)
    return threads


def test_a_failed_write_in_a_writer_thread_ends_in_one_line_and_resumes(
    synth_root, tmp_path, store_suffix, monkeypatch
):
    out, clean = tmp_path / f"s{store_suffix}", tmp_path / f"clean{store_suffix}"
    threads = fail_second_block(monkeypatch, store_suffix)
    with pytest.raises(FeatcacheError) as failed:
        extract(extract_config(synth_root, out), ctx=CPU)
    message = str(failed.value)
    assert "\n" not in message and message.startswith(f"cannot write {out} (No space left on device)")
    assert message.endswith("then run the same command again: the blocks already written are kept")
    assert threads and threading.get_ident() not in threads  # written off this thread, raised on it
    with FeatureStore.open(out, allow_incomplete=True) as store:
        written = store.written()
        assert written[:4].all() and not written[4:8].any() and not store.record.complete
        # Whole blocks only: another writer may have finished a later block before the error stopped the run.
        assert all(written[a:b].all() or not written[a:b].any() for a, b in store.blocks())
        left = int((~written).sum())
    report = extract(extract_config(synth_root, out), ctx=CPU)
    assert report.resumed and report.computed == left
    extract(extract_config(synth_root, clean), ctx=CPU)
    assert_same_bytes(out, clean)


def test_an_error_on_the_calling_thread_still_writes_the_blocks_submitted(tmp_path):
    """Blocks already computed and submitted when the caller fails are written, never torn nor lost."""
    started, release = threading.Event(), threading.Event()
    written: list[int] = []

    def slow_write(store, start, rows):
        started.set()
        release.wait(10)
        written.append(start)

    with pytest.raises(KeyboardInterrupt):
        with BlockWriter(None, slow_write, 1, buffer_shape=(2, 3), dtype=torch.float16, pin=False) as writer:
            for start in (0, 2):
                writer.submit(Block(start, start + 2, {}, writer.buffer(), None))
            started.wait(10)
            release.set()
            raise KeyboardInterrupt
    assert written == [0, 2]


def test_the_buffer_pool_bounds_the_blocks_in_flight():
    """With every buffer (writers + 1) in flight, the caller waits until a writer gives one back."""
    release = threading.Event()
    got: list[torch.Tensor] = []

    def write(store, start, rows):
        release.wait(10)

    with BlockWriter(None, write, 2, buffer_shape=(2, 3), dtype=torch.float32, pin=False) as writer:
        buffers = [writer.buffer() for _ in range(3)]
        for i, buffer in enumerate(buffers):
            writer.submit(Block(2 * i, 2 * i + 2, {}, buffer, None))
        waiting = threading.Thread(target=lambda: got.append(writer.buffer()))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and not got
        release.set()
        waiting.join(10)
        assert any(got[0] is buffer for buffer in buffers)
    assert sorted(start for start, _ in writer.completed()) == [0, 2, 4]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pinned_copies_back_from_cuda(synth_root, tmp_path):
    """On CUDA the buffers are pinned, the features are cast on the GPU, and each block's copy is complete before
    it is written."""
    writer = BlockWriter(None, lambda *_: None, 1, buffer_shape=(4, 2), dtype=torch.float16, pin=True)
    assert all(buffer.is_pinned() for buffer in writer._free.queue)
    out = tmp_path / "s.zarr"
    extract(extract_config(synth_root, out, device="cuda", dtype="float16", batch_size=4), ctx=CPU)
    encoder = build_encoder("vit_micro", "random", seed=0).cuda().eval()
    with FeatureStore.open(out) as store:
        rows = np.arange(store.n)
        images = store.images(rows)
        expected = torch.cat(
            [
                encode_views(
                    encoder, images[a:b], store.view_names, device=torch.device("cuda"), dtype=torch.float16
                ).cpu()
                for a, b in store.blocks()
            ]
        )
        torch.testing.assert_close(store.features(rows).to(torch.float16), expected, atol=1e-2, rtol=1e-2)
