"""featcache.store.fill: the block loop of an extraction: pending blocks only, this rank's share, unreadable files
and odd masks screened, the store marked complete with the run's timing."""

import dataclasses
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.core.context import Context
from featcache.core.errors import BadFileError, FeatcacheError
from featcache.core.ranks import Distributed
from featcache.data.layouts import find_samples
from featcache.store import FeatureStore
from featcache.store.encode import encode_views
from featcache.store.fill import fill
from featcache.store.schema import SKIPPED
from featcache.store.writer import BlockWriter
from tests.helpers import CPU, extract_config, tiny_identity, write_mask


class Pooled(torch.nn.Module):
    """A stand-in encoder: [N, 3, 32, 32] -> [N, 8, 2, 2], each 16 px patch's mean colour, repeated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(x, 16)
        return torch.cat([pooled, 2 * pooled, pooled[:, :2] - 1], dim=1)


ENCODER = Pooled()


def six_samples(synth_root, changes=None):
    """The first six samples of `synth_root`; ``changes`` maps a row to fields of its `Sample` to replace."""
    index = find_samples(synth_root)
    samples = [dataclasses.replace(s, **(changes or {}).get(i, {})) for i, s in enumerate(index.samples[:6])]
    return dataclasses.replace(index, samples=samples)


def new_store(path, index):
    """An empty store for ``index`` at 32 px, blocks of two, as `open_for_extraction` creates it."""
    return FeatureStore.create(
        path,
        identity=tiny_identity(),
        ids=[s.id for s in index.samples],
        splits=[s.split for s in index.samples],
        orig_hw=np.array([s.orig_hw for s in index.samples]),
        width=8,
        grid=(2, 2),
        shard_size=2,
    )


def run_fill(store, index, ctx=CPU, **overrides):
    blocks = []
    cfg = extract_config(index.root, store.path, image_size=32, batch_size=3, shard_size=2, **overrides)
    report = fill(store, index=index, encoder=ENCODER, cfg=cfg, ctx=ctx, on_block=lambda a, b: blocks.append((a, b)))
    return report, blocks


def test_every_block_is_encoded_with_its_views_and_the_store_completed(synth_root, tmp_path, store_suffix):
    index = six_samples(synth_root)
    with new_store(tmp_path / f"s{store_suffix}", index) as store:
        report, blocks = run_fill(store, index)
        assert sorted(blocks) == [(0, 2), (2, 4), (4, 6)]
        assert (report.n, report.computed, report.resumed, report.rank) == (6, 6, False, 0)
        assert store.record.complete and store.written().all()
        images = store.images(range(6))
        assert images.dtype == torch.uint8 and images.shape == (6, 3, 32, 32) and images.float().std() > 5
        expected = encode_views(ENCODER, images, store.view_names, device=CPU.device, dtype=torch.float16)
        assert torch.equal(store.features(range(6)), expected.float())
        extraction = store.record.extraction
        assert (extraction.measured_images, extraction.device, extraction.world_size, extraction.batch_size) == (
            6,
            "cpu",
            1,
            3,
        )


def test_only_the_pending_blocks_are_computed_and_the_timing_is_scaled_to_the_whole(synth_root, tmp_path):
    index = six_samples(synth_root)
    with new_store(tmp_path / "s.zarr", index) as store:
        zeros = np.zeros((2, 3, 32, 32), np.uint8), np.zeros((2, 32, 32), np.uint8)
        store.write_block(2, *zeros, features=torch.zeros(2, 4, 8, 2, 2))
        report, blocks = run_fill(store, index)
        assert report.computed == 4 and sorted(blocks) == [(0, 2), (4, 6)]
        assert not store.features([2, 3]).any() and store.features([0, 5]).any()
        extraction = store.record.extraction
        assert extraction.measured_images == 4
        assert extraction.seconds == pytest.approx(extraction.measured_seconds * 6 / 4, abs=2e-3)


def test_a_written_block_that_lost_chunks_is_computed_again_whole(synth_root, tmp_path):
    index = six_samples(synth_root)
    with new_store(tmp_path / "s.zarr", index) as store:
        run_fill(store, index)
        before = store.features(range(6))
        store.backend.delete_chunks("features", 2, 4)
        store.mark_incomplete()
        report, blocks = run_fill(store, index)
        assert report.computed == 2 and blocks == [(2, 4)] and store.record.complete
        assert torch.equal(store.features(range(6)), before)


def test_a_rank_takes_every_other_block_and_leaves_the_completion_to_rank_0(synth_root, tmp_path):
    index = six_samples(synth_root)
    rank1 = Context(device=torch.device("cpu"), progress=False, ranks=Distributed(1, 2, torch.device("cpu"), False))
    with new_store(tmp_path / "s.zarr", index) as store:
        report, blocks = run_fill(store, index, ctx=rank1)
        assert (report.computed, report.rank, blocks) == (2, 1, [(2, 4)])
        assert store.written().tolist() == [False, False, True, True, False, False] and not store.record.complete


def test_an_unreadable_image_is_refused_unless_skipped_and_then_left_out_of_every_split(synth_root, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    index = six_samples(synth_root, {3: {"image": broken}})
    with new_store(tmp_path / "s.zarr", index) as store:
        with pytest.raises(BadFileError, match=r"broken\.jpg.*, or pass --skip-bad to leave it out$"):
            run_fill(store, index)
        assert not store.written()[2:4].any() and not store.record.complete
        report, _ = run_fill(store, index, skip_bad=True)
        assert (
            store.record.complete and store.splits[3] == SKIPPED and store.record.skipped_bad == [index.samples[3].id]
        )
    assert f"skipping {index.samples[3].id}: " in capsys.readouterr().err


def test_odd_masks_are_refused_with_strict_else_binarised_and_said_once(synth_root, tmp_path, capsys):
    levels = np.zeros((48, 64), np.uint8)
    levels[10:30, 10:40], levels[30:40, 10:40] = 255, 100
    zero_one = (levels == 255).astype(np.uint8)
    write_mask(tmp_path / "levels.png", levels)
    write_mask(tmp_path / "zero_one.png", zero_one)
    index = six_samples(synth_root, {1: {"mask": tmp_path / "levels.png"}, 4: {"mask": tmp_path / "zero_one.png"}})
    with new_store(tmp_path / "s.zarr", index) as store:
        with pytest.raises(FeatcacheError) as err:
            run_fill(store, index, strict=True)
        assert str(err.value) == (
            f"mask {tmp_path / 'levels.png'} has values other than 0 and 255; save it as a 0/255 gray PNG, or drop "
            "--strict to binarise it at the middle of its range"
        )
        run_fill(store, index)
        expected = np.asarray(Image.fromarray(zero_one).resize((32, 32), Image.Resampling.NEAREST))
        assert np.array_equal(store.masks([4])[0].numpy(), expected)
    err = capsys.readouterr().err
    assert "warning: 1 masks were not 0/255 gray images" in err and "(e.g. levels.png (values other than 0" in err
    assert "note: 1 masks were read as stored (e.g. zero_one.png (values 0/1 (read as 0/1)))" in err


def test_ctrl_c_while_a_block_is_handed_to_the_writers_stops_after_the_hand_over(synth_root, tmp_path, monkeypatch):
    """A Ctrl-C raised inside the hand-over could leave the writers' queue locked and the command waiting for
    its writers forever (`featcache.core.interrupt`): it is raised after the batch, every writer ends, and the
    block handed over is written."""
    handed = []
    submit = BlockWriter.submit

    def submit_during_ctrl_c(self, block):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:  # where an undeferred KeyboardInterrupt would be raised
            pass
        handed.append(block.start)
        submit(self, block)

    monkeypatch.setattr(BlockWriter, "submit", submit_during_ctrl_c)
    index = six_samples(synth_root)
    with new_store(tmp_path / "s.zarr", index) as store:
        with pytest.raises(KeyboardInterrupt):
            run_fill(store, index)
        assert handed == [0] and store.written().tolist() == [True, True, False, False, False, False]
        assert not store.record.complete
    assert not [t for t in threading.enumerate() if t.name.startswith("featcache-writer")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
