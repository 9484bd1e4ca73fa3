"""Tests for featcache.synth: layout, masks, determinism, sizes, contact sheet, refusal."""

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featcache.data.synth as synth_module
from featcache.core.errors import FeatcacheError
from featcache.data.render import sample_image_size
from featcache.data.synth import SynthConfig, SynthReport, data_dir, synthesize, truth_dir

TINY = (48, 64)
COUNTS = {"train": 3, "val": 2, "test": 2}


def _tiny(out: Path, seed: int = 0) -> SynthReport:
    return synthesize(
        SynthConfig(
            out,
            n_train=COUNTS["train"],
            n_val=COUNTS["val"],
            n_test=COUNTS["test"],
            image_size=TINY,
            seed=seed,
        )
    )


def _all_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthReport]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, _tiny(out)


def test_layout_and_names(tiny_out: tuple[Path, SynthReport]) -> None:
    out, report = tiny_out
    assert report.out == out
    assert report.counts == COUNTS
    assert (out / "ISIC-2017_Training_Data").is_dir()
    assert (out / "ISIC-2017_Validation_Part1_GroundTruth").is_dir()
    assert (out / "ISIC-2017_Test_v2_Data").is_dir()
    next_id = 0
    for split, folder in [("train", "Training"), ("val", "Validation"), ("test", "Test_v2")]:
        assert data_dir(out, split) == out / f"ISIC-2017_{folder}_Data"
        assert truth_dir(out, split) == out / f"ISIC-2017_{folder}_Part1_GroundTruth"
        ids = [f"ISIC_{i:07d}" for i in range(next_id, next_id + COUNTS[split])]
        next_id += COUNTS[split]
        assert sorted(p.name for p in data_dir(out, split).iterdir()) == [f"{i}.jpg" for i in ids]
        assert sorted(p.name for p in truth_dir(out, split).iterdir()) == [f"{i}_segmentation.png" for i in ids]


def test_masks_binary_same_size_non_empty(tiny_out: tuple[Path, SynthReport]) -> None:
    out, _ = tiny_out
    for split in COUNTS:
        for image_path in sorted(data_dir(out, split).iterdir()):
            image = Image.open(image_path)
            mask = Image.open(truth_dir(out, split) / f"{image_path.stem}_segmentation.png")
            assert image.format == "JPEG" and image.mode == "RGB"
            assert mask.format == "PNG" and mask.mode == "L"
            assert image.size == mask.size == TINY[::-1]
            values = np.asarray(mask)
            assert set(np.unique(values)) == {0, 255}
            assert 0.05 <= (values == 255).mean() <= 0.5


def test_contact_sheet(tiny_out: tuple[Path, SynthReport]) -> None:
    out, report = tiny_out
    assert report.contact_sheet == out / "contact_sheet.png"
    sheet = np.asarray(Image.open(report.contact_sheet).convert("RGB"))
    assert (sheet == (0, 255, 0)).all(axis=-1).any()  # mask outlines are drawn


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first, second = _all_bytes(_tiny(tmp_path / "a").out), _all_bytes(_tiny(tmp_path / "b").out)
    assert first == second
    other = _all_bytes(_tiny(tmp_path / "c", seed=1).out)
    assert other.keys() == first.keys()
    assert other["ISIC-2017_Training_Data/ISIC_0000000.jpg"] != first["ISIC-2017_Training_Data/ISIC_0000000.jpg"]


def test_image_does_not_depend_on_counts(tmp_path: Path) -> None:
    few = synthesize(SynthConfig(tmp_path / "few", n_train=2, n_val=0, n_test=0, image_size=TINY)).out
    many = _all_bytes(_tiny(tmp_path / "many").out)
    for name, data in _all_bytes(few).items():
        if name.startswith("ISIC-2017_Training"):
            assert many[name] == data


def test_rerun_replaces_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "data"
    synthesize(SynthConfig(out, n_train=4, n_val=1, n_test=1, image_size=TINY))
    synthesize(SynthConfig(out, n_train=2, n_val=1, n_test=1, image_size=TINY))
    assert len(list(data_dir(out, "train").iterdir())) == 2
    assert _all_bytes(out) == _all_bytes(
        synthesize(SynthConfig(tmp_path / "fresh", n_train=2, n_val=1, n_test=1, image_size=TINY)).out
    )


def test_default_size_images_written(tmp_path: Path) -> None:
    report = synthesize(SynthConfig(tmp_path / "data", n_train=2, n_val=0, n_test=0))
    for index, path in enumerate(sorted(data_dir(report.out, "train").iterdir())):
        height, width = sample_image_size(index)
        assert Image.open(path).size == (width, height)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FeatcacheError, match="mine"):
        _tiny(out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_refuses_foreign_file_inside_previous_output(tmp_path: Path) -> None:
    out = _tiny(tmp_path / "data").out
    stray = data_dir(out, "train") / "ISIC_0000000_superpixels.png"
    stray.write_bytes(b"x")
    with pytest.raises(FeatcacheError, match="superpixels"):
        _tiny(out)
    assert stray.exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="n_train"):
        synthesize(SynthConfig(tmp_path / "a", n_train=0))
    with pytest.raises(FeatcacheError, match="image_size"):
        synthesize(SynthConfig(tmp_path / "b", image_size=(4, 4)))


def test_ctrl_c_takes_effect_after_the_image_being_waited_for(tmp_path: Path, monkeypatch) -> None:
    """The main thread waits on futures the pool's threads complete; a Ctrl-C raised inside that wait could leave
    a future's lock held and the pool waiting forever at its end (`featcache.core.interrupt`). It takes effect
    once the image waited for is in, and every pool thread has ended when it is raised."""
    advanced: list[int] = []
    real_bar, real_write = synth_module.progress_bar, synth_module._write_sample

    @contextmanager
    def counting_bar(*args, **kwargs):
        with real_bar(*args, **kwargs) as bar:
            advance = bar.advance
            bar.advance = lambda task, n=1: (advanced.append(n), advance(task, n))
            yield bar

    def write_then_ctrl_c(job, **kwargs):
        if job[1] == 0:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the main thread is waiting for this image meanwhile
        return real_write(job, **kwargs)

    monkeypatch.setattr(synth_module, "progress_bar", counting_bar)
    monkeypatch.setattr(synth_module, "_write_sample", write_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _tiny(tmp_path / "data")
    assert advanced == [1]
    assert not [t for t in threading.enumerate() if t.name.startswith("ThreadPoolExecutor")]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
