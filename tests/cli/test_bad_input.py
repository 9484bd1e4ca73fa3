"""Bad input ends with one line on stderr naming the file and the fix, exit code 1, nothing written lost."""

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featcache.core.errors import FeatcacheError
from featcache.store.extract import extract
from featcache.store.feature_store import FeatureStore
from featcache.store.schema import FORMAT_VERSION, SKIPPED
from tests.helpers import (
    CPU,
    extract_config,
    one_line_error,
    quick_compare,
    quick_sweep,
    rewrite_masks_as_0_1,
    write_mask,
)

MICRO = ["--encoder", "random", "--arch", "vit_micro", "--image-size", "64", "--workers", "0", "--shard-size", "4"]
TRAIN = "ISIC-2017_Training_Data"
TRUTH = "ISIC-2017_Training_Part1_GroundTruth"


@pytest.fixture
def data(synth_root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(synth_root, copy)
    return copy


def test_missing_and_empty_data_folder(cli, tmp_path):
    one_line_error(cli("extract", tmp_path / "nope", "--out", tmp_path / "s.zarr", *MICRO), str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    one_line_error(cli("extract", tmp_path / "empty", "--out", tmp_path / "s.zarr", *MICRO), str(tmp_path / "empty"))


def test_unpaired_files_listed_then_skipped_and_recorded(cli, data, tmp_path):
    (data / TRUTH / "ISIC_0000003_segmentation.png").unlink()
    shutil.copy(data / TRUTH / "ISIC_0000004_segmentation.png", data / TRUTH / "ISIC_0000999_segmentation.png")
    out = tmp_path / "s.zarr"
    one_line_error(cli("extract", data, "--out", out, *MICRO), "ISIC_0000003", "ISIC_0000999", "--skip-unpaired")
    assert not out.exists()
    assert cli("extract", data, "--out", out, "--skip-unpaired", *MICRO).returncode == 0
    with FeatureStore.open(out) as store:
        assert "ISIC_0000003" not in store.ids and store.n == 23
        assert len(store.record.dataset.skipped) == 2


def test_truncated_jpeg_keeps_written_blocks_and_skip_bad_records_it(cli, data, tmp_path):
    bad = data / TRAIN / "ISIC_0000009.jpg"
    bad.write_bytes(bad.read_bytes()[:1200])  # the header reads, the pixels do not
    out = tmp_path / "s.zarr"
    one_line_error(cli("extract", data, "--out", out, *MICRO), "ISIC_0000009.jpg", "--skip-bad")
    with FeatureStore.open(out, allow_incomplete=True) as store:
        assert store.written().sum() == 8  # the two blocks before the bad file stay written
    assert "after the extraction finishes (run the same `featcache extract` again)" in cli("info", out).stdout
    result = cli("extract", data, "--out", out, "--skip-bad", *MICRO)
    assert result.returncode == 0, result.stderr
    with FeatureStore.open(out) as store:
        assert store.record.skipped_bad == ["ISIC_0000009"]
        assert store.splits[9] == SKIPPED and 9 not in store.indices("train")
        assert len(store.indices("train")) == 11
    assert "1 unreadable or unpaired files: ISIC_0000009" in cli("info", out).stdout
    (data / TRAIN / "ISIC_0000005.jpg").write_bytes(b"not a jpeg")  # unreadable header: left out at indexing
    one_line_error(cli("extract", data, "--out", tmp_path / "t.zarr", *MICRO), "ISIC_0000005.jpg", "--skip-bad")
    assert cli("extract", data, "--out", tmp_path / "t.zarr", "--skip-bad", *MICRO).returncode == 0
    with FeatureStore.open(tmp_path / "t.zarr") as store:
        assert "ISIC_0000005" not in store.ids and store.record.skipped_bad == ["ISIC_0000009"]
        assert store.record.dataset.skipped == [f"{TRAIN}/ISIC_0000005.jpg"]


def test_mask_of_another_size(cli, data, tmp_path):
    mask = data / TRUTH / "ISIC_0000002_segmentation.png"
    write_mask(mask, np.zeros((10, 10), np.uint8))
    one_line_error(cli("extract", data, "--out", tmp_path / "s.zarr", *MICRO), str(mask), "replace the mask")


def test_rgb_and_grey_masks_binarised_with_a_warning_refused_under_strict(cli, data, tmp_path):
    mask = data / TRUTH / "ISIC_0000001_segmentation.png"
    gray = np.asarray(Image.open(mask))
    Image.fromarray(np.stack([gray // 2 + 60] * 3, -1)).save(mask)  # RGB, values 60 and 187
    one_line_error(cli("extract", data, "--out", tmp_path / "a.zarr", "--strict", *MICRO), str(mask), "0/255 gray PNG")
    result = cli("extract", data, "--out", tmp_path / "b.zarr", *MICRO)
    assert result.returncode == 0 and "warning: 1 masks were not 0/255" in result.stderr
    with FeatureStore.open(tmp_path / "b.zarr") as store:
        assert np.array_equal(
            store.masks([1])[0].numpy(), (np.asarray(Image.open(mask).convert("L").resize((64, 64), 0)) > 127)
        )


def test_output_that_is_not_a_store_and_out_of_range_options(cli, synth_root, tmp_path):
    (tmp_path / "notes.h5").write_text("my notes")
    one_line_error(
        cli("extract", synth_root, "--out", tmp_path / "notes.h5", *MICRO),
        "notes.h5",
        "choose another --out or move it away",
    )
    assert (tmp_path / "notes.h5").read_text() == "my notes"
    info = cli("info", tmp_path / "notes.h5")  # info has no --out or --overwrite to suggest
    one_line_error(info, "notes.h5", "point to a store that `featcache extract` wrote")
    assert "--overwrite" not in info.stderr
    one_line_error(
        cli("extract", synth_root, "--out", tmp_path / "s.zarr", "--views", "all", *MICRO), "--views all", code=2
    )
    one_line_error(
        cli("extract", synth_root, "--out", tmp_path / "s.zarr", "--val-fraction", "1.5", *MICRO),
        "--val-fraction",
        code=2,
    )
    one_line_error(cli("extract", synth_root, "--out", tmp_path / "s.npy", *MICRO), ".zarr")


def test_wrong_encoder_incomplete_store_and_too_large_size(cli, micro_store, synth_root, tmp_path):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.save(VisionTransformer(224, 16, 2, 2, 32, 64).state_dict(), tmp_path / "other.pth")
    one_line_error(
        cli("train-decoder", micro_store, "--size", "4", "--encoder", tmp_path / "other.pth", "--epochs", "1"),
        "was written by vit_micro",
        "not by vit_micro",
    )
    one_line_error(
        cli("compare-e2e", micro_store, "--encoder", tmp_path / "other.pth", "--sizes", "4", "--epochs", "1"),
        "was written by vit_micro",
    )
    one_line_error(cli("train-decoder", micro_store, "--size", "50", "--epochs", "1"), "--size 50", "12 images")
    torch.save(VisionTransformer(224, 16, 4, 4, 128, 256).state_dict(), tmp_path / "mini.pth")
    one_line_error(
        cli("extract", synth_root, "--out", tmp_path / "x.zarr", *MICRO[2:], "--encoder", tmp_path / "mini.pth"),
        "another architecture",
        "--arch",
    )


def test_full_disk_is_explained_and_the_store_stays_resumable(synth_root, tmp_path, monkeypatch):
    out, reference = tmp_path / "s.zarr", tmp_path / "ref.zarr"
    original = FeatureStore.write_block
    calls = {"n": 0}

    def full_after_two(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_block", full_after_two)
    with pytest.raises(FeatcacheError, match=r"No space left on device.*run the same command again"):
        extract(extract_config(synth_root, out), ctx=CPU)
    monkeypatch.setattr(FeatureStore, "write_block", original)
    report = extract(extract_config(synth_root, out), ctx=CPU)
    assert report.resumed and report.computed == 16
    extract(extract_config(synth_root, reference), ctx=CPU)
    with FeatureStore.open(out) as a, FeatureStore.open(reference) as b:
        assert torch.equal(a.features(np.arange(24)), b.features(np.arange(24)))


def test_duplicate_ids(cli, data, tmp_path):
    shutil.copy(data / TRAIN / "ISIC_0000001.jpg", data / "ISIC-2017_Validation_Data" / "ISIC_0000001.jpg")
    shutil.copy(
        data / TRUTH / "ISIC_0000001_segmentation.png",
        data / "ISIC-2017_Validation_Part1_GroundTruth" / "ISIC_0000001_segmentation.png",
    )
    one_line_error(cli("extract", data, "--out", tmp_path / "s.zarr", *MICRO), "ISIC_0000001", "one split only")
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "masks").mkdir()
    for name in ("a.jpg", "a.png"):
        shutil.copy(data / TRAIN / "ISIC_0000002.jpg", plain / "images" / name)
    shutil.copy(data / TRUTH / "ISIC_0000002_segmentation.png", plain / "masks" / "a.png")
    one_line_error(cli("extract", plain, "--out", tmp_path / "t.zarr", *MICRO), "same name 'a'", "rename or remove one")


def test_masks_stored_as_0_1_are_noted_once_and_accepted_under_strict(cli, data, tmp_path):
    truth = data / TRUTH
    rewrite_masks_as_0_1(sorted(truth.glob("*.png"))[:3])
    result = cli("extract", data, "--out", tmp_path / "a.zarr", "--strict", *MICRO)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "3 masks were read as stored" in notes[0] and "0/1" in notes[0], result.stderr
    assert "warning" not in result.stderr


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: a folder in which creating a file or folder raises PermissionError.

    chmod cannot make one when the tests run as root (root writes anywhere), so os.open and os.mkdir
    are refused there instead, as a read-only mount or a folder of another user refuses them.
    """
    folders: list[Path] = []
    real_open, real_mkdir = os.open, os.mkdir

    def refused(path) -> bool:
        target = Path(os.fsdecode(path)).absolute()
        return any(target != f and target.is_relative_to(f) for f in folders)

    def denied(path) -> PermissionError:
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

    def guarded_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and refused(path):
            raise denied(path)
        return real_open(path, flags, *args, **kwargs)

    def guarded_mkdir(path, *args, **kwargs):
        if refused(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "mkdir", guarded_mkdir)

    def make(folder: Path) -> Path:
        folder.mkdir()
        folders.append(folder.absolute())
        return folder

    return make


def test_read_only_output_folder_is_one_line_before_any_work(synth_root, micro_store, tmp_path, read_only, monkeypatch):
    import featcache.train.sweep
    from featcache.core.io import write_json
    from featcache.train import compare_e2e, train_decoder

    ro = read_only(tmp_path / "ro")
    with pytest.raises(
        FeatcacheError,
        match=r"cannot create .*ro/s\.zarr in .*ro \(Permission denied\); "
        r"make that folder writable or choose another --out",
    ):
        extract(extract_config(synth_root, ro / "s.zarr"), ctx=CPU)
    with pytest.raises(FeatcacheError, match=r"cannot write \S+ro/sub/e\.json \(Permission denied\); make \S+ro "):
        write_json(ro / "sub" / "e.json", {})

    def no_training(*args, **kwargs):
        raise AssertionError("trained although --out cannot be written")

    monkeypatch.setattr(featcache.train.sweep, "train_any_mode", no_training)
    refused = r"--out \S+ro/run: cannot write in \S+ro \(Permission denied\); make that folder writable or choose"
    with pytest.raises(FeatcacheError, match=refused):
        train_decoder(quick_sweep(micro_store, ro / "run", size=4, seeds=(0,), epochs=1), ctx=CPU)
    with pytest.raises(FeatcacheError, match=refused):
        compare_e2e(quick_compare(micro_store, ro / "run", sizes=(4,), seeds=(0,), modes=("C",), epochs=1), ctx=CPU)
    assert list(ro.iterdir()) == []


def test_out_naming_a_file_is_refused_before_training(cli, micro_store, tmp_path):
    notes = tmp_path / "notes"
    notes.write_text("my notes")
    for out in (notes, notes / "run"):
        result = cli("train-decoder", micro_store, "--size", "4", "--seeds", "0", "--epochs", "1", "--out", out)
        one_line_error(result, f"--out {out}", f"{notes} is a file, not a folder", "choose another --out")
        assert "C size 4" not in result.stderr  # refused before training, not after
    one_line_error(
        cli(
            "compare-e2e", micro_store, "--sizes", "4", "--seeds", "0", "--modes", "C", "--epochs", "1", "--out", notes
        ),
        f"--out {notes} is a file, not a folder",
    )
    assert notes.read_text() == "my notes"


def test_malformed_format_version_is_one_line_and_overwrite_replaces_it(cli, micro_store, synth_root, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(micro_store, store)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["featcache"]["format_version"] = "1"
    (store / "zarr.json").write_text(json.dumps(meta))
    one_line_error(
        cli("info", store),
        f"{store}: its featcache attribute is malformed (format_version '1')",
        "re-extract with --overwrite",
    )
    assert cli("extract", synth_root, "--out", store, "--overwrite", *MICRO).returncode == 0
    with FeatureStore.open(store) as reopened:
        assert reopened.record.format_version == FORMAT_VERSION  # a valid record again, of this version


def test_random_bytes_as_encoder_is_not_a_checkpoint(cli, synth_root, tmp_path):
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    result = cli("extract", synth_root, "--out", tmp_path / "s.zarr", *MICRO[2:], "--encoder", noise)
    one_line_error(result, f"{noise} is not a torch checkpoint", "replace it with a .pt/.pth file")
    assert "unpickle" not in result.stderr


def test_symlink_loop_in_a_data_folder_is_named_and_left_out(data, capsys):
    from featcache.data.layouts import find_samples

    loop = data / TRAIN / "ISIC_0000099.jpg"
    os.symlink(loop.name, loop)  # the link points at itself
    index = find_samples(data)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: left out 1 symbolic links that lead nowhere") and str(loop) in warning
    assert warning.count("\n") == 1
    assert "ISIC_0000099" not in [s.id for s in index.samples] and index.skipped == [f"{TRAIN}/ISIC_0000099.jpg"]
    with pytest.raises(FeatcacheError, match=r"1 symbolic links lead nowhere .*ISIC_0000099\.jpg; remove them"):
        find_samples(data, strict=True)
