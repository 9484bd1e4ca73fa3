import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from featcache.core.errors import FeatcacheError
from featcache.models import build_encoder, record_of
from featcache.store import FeatureStore
from featcache.store.encode import encode_views
from featcache.store.extract import extract
from tests.helpers import CPU, MICRO_EXTRACT, assert_same_store, extract_config, run_then_sigkill, run_torchrun


def test_features_are_the_encoders_on_every_flip_view(synth_root, tmp_path, store_suffix):
    out = tmp_path / f"s{store_suffix}"
    report = extract(extract_config(synth_root, out, dtype="float32"), ctx=CPU)
    assert report.computed == report.n == 24 and not report.resumed
    encoder = build_encoder("vit_micro", "random", seed=0)
    with FeatureStore.open(out, encoder=record_of(encoder)) as store:
        assert store.record.complete and store.record.extraction.measured_images == 24
        rows = store.indices("test")
        images = store.images(rows)
        feats = store.features(rows)
        assert feats.shape == (6, 4, 32, 4, 4)
        with torch.no_grad():
            expected = encode_views(encoder, images, store.view_names, device=torch.device("cpu"))
            hflip = encoder(images.flip(-1).float() / 255)
        torch.testing.assert_close(feats, expected)
        torch.testing.assert_close(feats[:, 1], hflip)
        assert set(np.unique(store.masks(rows).numpy())) <= {0, 1}
        assert store.record.dataset.layout == "isic2017"


def test_provenance_mismatch_refuses_and_overwrite_replaces(micro_store, synth_root, tmp_path):
    out = tmp_path / "s.zarr"
    extract(extract_config(synth_root, out), ctx=CPU)
    with pytest.raises(FeatcacheError, match=r"holds another extraction \(.*encoder.*--overwrite"):
        extract(extract_config(synth_root, out, seed=1), ctx=CPU)
    with pytest.raises(FeatcacheError, match=r"views: flips -> identity"):
        extract(extract_config(synth_root, out, views="identity"), ctx=CPU)
    report = extract(extract_config(synth_root, out, views="identity", overwrite=True), ctx=CPU)
    assert report.computed == 24
    again = extract(extract_config(synth_root, out, views="identity"), ctx=CPU)
    assert again.computed == 0 and again.resumed


def test_a_store_is_not_resumed_on_a_device_that_computes_in_another_precision(micro_store, synth_root):
    from featcache.data import find_samples
    from featcache.store.extract import store_identity
    from featcache.store.schema import describe_differences

    with FeatureStore.open(micro_store) as store:
        assert store.record.compute == "float32"  # extracted on the CPU
        on_gpu = store_identity(
            build_encoder("vit_micro", "random"),
            index=find_samples(synth_root),
            cfg=extract_config(synth_root, micro_store, dtype="float32"),
            device=torch.device("cuda"),
        )
        assert describe_differences(store.record, on_gpu) == ["compute: float32 -> bfloat16 autocast"]


def test_existing_path_that_is_not_a_store_is_kept(synth_root, tmp_path):
    out = tmp_path / "precious.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(FeatcacheError, match="not a featcache store"):
            extract(extract_config(synth_root, out, overwrite=overwrite), ctx=CPU)
    assert (out / "notes.txt").read_text() == "mine"


def test_sigkill_then_rerun_equals_uninterrupted(synth_root, tmp_path, store_suffix):
    out, reference = tmp_path / f"killed{store_suffix}", tmp_path / f"ref{store_suffix}"
    run_then_sigkill(f"""
        from featcache.store.extract import extract
        from tests.helpers import CPU, extract_config

        def die_at_block(start, stop):
            if stop >= 12:  # three of six blocks written
                die()

        extract(extract_config({str(synth_root)!r}, {str(out)!r}), ctx=CPU, on_block=die_at_block)
    """)
    with FeatureStore.open(out, allow_incomplete=True) as store:
        # Writer threads may have finished the next block too before the kill; whole blocks only.
        written = int(store.written().sum())
        assert written in (12, 16, 20) and not store.record.complete
    with pytest.raises(FeatcacheError, match="incomplete"):
        FeatureStore.open(out)
    report = extract(extract_config(synth_root, out), ctx=CPU)  # the lock of the dead run is stale
    assert report.resumed and report.computed == 24 - written
    extract(extract_config(synth_root, reference), ctx=CPU)
    assert_same_store(out, reference)


def test_second_writer_is_refused_while_the_first_lives(synth_root, tmp_path):
    out = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "s.zarr.lock").write_text(
            json.dumps({"host": os.uname().nodename, "pid": holder.pid, "since": "now"})
        )
        with pytest.raises(FeatcacheError, match=rf"being written by pid {holder.pid}.*delete .*s.zarr.lock"):
            extract(extract_config(synth_root, out), ctx=CPU)
    finally:
        holder.kill()
        holder.wait()
    extract(extract_config(synth_root, out), ctx=CPU)  # its owner is gone now: recovered
    assert not (tmp_path / "s.zarr.lock").exists()


def test_fsspec_memory_url(synth_root, micro_store):
    url = "memory://featcache-extract/s.zarr"
    extract(extract_config(synth_root, url, dtype="float32"), ctx=CPU)
    with FeatureStore.open(url) as a, FeatureStore.open(micro_store) as b:
        assert torch.equal(a.features(np.arange(24)), b.features(np.arange(24)))


def test_torchrun_two_cpu_ranks_equal_one_process(synth_root, micro_store, tmp_path):
    out = tmp_path / "ranks.zarr"
    result = run_torchrun("extract", synth_root, "--out", out, *MICRO_EXTRACT, "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_store(out, micro_store)
    with FeatureStore.open(out) as store:
        assert store.record.extraction.world_size == 2


def test_cli_extract_and_info(synth_root, tmp_path, cli):
    out = tmp_path / "s.h5"
    micro_defaults = "--encoder random --arch vit_micro --image-size 64 --views flips --workers 0".split()
    result = cli("extract", synth_root, "--out", out, *micro_defaults)  # default batch and shard sizes
    assert result.returncode == 0, result.stderr
    assert "24 of 24 samples" in result.stdout
    info = cli("info", out)
    assert info.returncode == 0 and "cos" in info.stdout
    summary = json.loads(cli("info", out, "--json").stdout)
    assert summary["complete"] and summary["shapes"]["features"] == [24, 4, 32, 4, 4]
    assert 0 < summary["flip_check_cos"]["mean"] < 1
    bad = cli("extract", synth_root, "--out", out, "--encoder", "random", "--arch", "vit_micro", "--image-size", "60")
    assert bad.returncode == 2 and "multiple of 16" in bad.stderr


def test_dataset_root_is_recorded_absolute(synth_root, tmp_path, monkeypatch):
    """A store extracted from a relative path still finds its dataset from any folder (--eval-size original)."""
    monkeypatch.chdir(synth_root.parent)
    out = tmp_path / "rel.zarr"
    extract(extract_config(synth_root.name, out, views="identity"), ctx=CPU)
    with FeatureStore.open(out) as store:
        root = store.record.dataset_root
    assert os.path.isabs(root) and os.path.samefile(root, synth_root)
