"""featcache.data.loading: images and masks read, resized and binarised; the dataset for DataLoaders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import Sample, find_samples
from featcache.data.loading import SampleDataset, load_image, load_mask, load_mask_checked, load_mask_full
from tests.data.conftest import H, W, write_image
from tests.helpers import write_mask


def lesion_box(h: int = 20, w: int = 30) -> np.ndarray:
    """Bool [h, w]: a lesion rectangle."""
    box = np.zeros((h, w), bool)
    box[5:15, 5:25] = True
    return box


def nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool [H, W] -> uint8 [size, size] 0/1, resized nearest-neighbour."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))


def test_load_image_and_mask_shapes_dtypes_and_binarisation(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    image = load_image(tmp_path / "a.jpg", 32)
    assert image.shape == (3, 32, 32) and image.dtype == np.uint8 and image.flags.c_contiguous

    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[:, W // 2 :] = (200, 220, 240)  # bright colour: lesion
    rgb[: H // 2, : W // 2] = (90, 100, 110)  # dark grey: background
    Image.fromarray(rgb).save(tmp_path / "rgb_mask.png")
    mask = load_mask(tmp_path / "rgb_mask.png", 16)
    assert mask.shape == (16, 16) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    assert mask[:, 8:].all() and not mask[:, :8].any()

    full = load_mask_full(tmp_path / "rgb_mask.png")
    assert full.shape == (H, W) and set(np.unique(full)) == {0, 1}
    assert full.sum() == H * (W // 2)


def test_jpeg_draft_close_to_full_decode(tmp_path: Path) -> None:
    y, x = np.mgrid[0:900, 0:1200]
    pixels = np.stack([x * 255 // 1199, y * 255 // 899, (x + y) * 255 // 2098], axis=-1)
    pixels[300:600, 400:800] = (230, 60, 40)
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "big.jpg", quality=95)
    drafted = load_image(tmp_path / "big.jpg", 224).astype(np.int16)
    with Image.open(tmp_path / "big.jpg") as img:
        full = img.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR, reducing_gap=None)
    reference = np.asarray(full).transpose(2, 0, 1).astype(np.int16)
    assert drafted.shape == (3, 224, 224)
    assert np.abs(drafted - reference).mean() < 2.0


def test_truncated_jpeg_names_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    write_image(path, size=(200, 150))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(FeatcacheError, match=r"broken\.jpg: cannot read image .*; replace the file$"):
        load_image(path, 32)  # --skip-bad is extract's option: only extract names it
    (tmp_path / "noise.png").write_bytes(b"not an image")
    with pytest.raises(FeatcacheError, match=r"noise\.png"):
        load_mask(tmp_path / "noise.png", 32)


def test_dataloader_two_workers_matches_single_process(isic2017: Path) -> None:
    dataset = SampleDataset(find_samples(isic2017).samples, 24)
    item = dataset[3]
    assert item["index"] == 3
    assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (24, 24) and item["mask"].dtype == torch.uint8
    single = list(DataLoader(dataset, batch_size=4, num_workers=0))
    workers = list(DataLoader(dataset, batch_size=4, num_workers=2))
    assert len(single) == len(workers) == 3
    for a, b in zip(single, workers, strict=True):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_mask_problems_are_reported_and_bad_files_caught(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(image)
    gray = np.zeros((20, 30), np.uint8)
    gray[5:15, 5:25] = 200
    write_mask(tmp_path / "gray.png", gray)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    write_mask(tmp_path / "clean.png", (gray > 0).astype(np.uint8) * 255)
    assert load_mask_checked(tmp_path / "clean.png", 16)[1] == ""
    assert load_mask_checked(tmp_path / "gray.png", 16)[1] == "values other than 0 and 255"
    mask, problem, note = load_mask_checked(tmp_path / "rgb.png", 16)
    assert problem == "RGB colour and values other than 0 and 255" and set(np.unique(mask)) == {0, 1} and note == ""
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(image.read_bytes()[:200])
    samples = [Sample("t", truncated, tmp_path / "clean.png", "train", (20, 30))]
    item = SampleDataset(samples, 16, catch_errors=True)[0]
    assert item["mask_problem"] == item["mask_note"] == ""
    assert "t.jpg" in item["error"] and "replace the file" in item["error"] and "\n" not in item["error"]
    with pytest.raises(FeatcacheError, match="t.jpg"):
        SampleDataset(samples, 16)[0]


def test_masks_stored_as_0_1_are_read_as_0_1_with_a_note_not_a_problem(tmp_path: Path) -> None:
    box = lesion_box()
    write_mask(tmp_path / "01.png", box.astype(np.uint8))  # 8-bit gray, lesion = 1
    mask, problem, note = load_mask_checked(tmp_path / "01.png", 30)
    assert problem == "" and note == "values 0/1 (read as 0/1)"
    assert np.array_equal(mask, nearest(box, 30))
    assert np.array_equal(load_mask_full(tmp_path / "01.png"), box)
    # The whole mask decides: a 0/255 mask with a few pixels at 1 is not a 0/1 mask.
    mixed = box.astype(np.uint8) * 255
    mixed[0, :3] = 1
    write_mask(tmp_path / "mixed.png", mixed)
    read = load_mask_checked(tmp_path / "mixed.png", 30)
    assert read.note == "" and read.problem == "values other than 0 and 255"
    assert np.array_equal(load_mask_full(tmp_path / "mixed.png"), box)
    image = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(image)
    item = SampleDataset([Sample("a", image, tmp_path / "01.png", "train", (20, 30))], 16)[0]
    assert item["mask"].sum() > 0 and item["mask_problem"] == "" and item["mask_note"] == "values 0/1 (read as 0/1)"


def test_16_bit_gray_masks_are_gray_and_cut_at_the_middle_of_their_range(tmp_path: Path) -> None:
    box = lesion_box()
    clean = box.astype(np.uint16) * 65535
    write_mask(tmp_path / "clean16.png", clean)
    graded = np.where(box, 40000, 1000).astype(np.uint16)  # 1000 of 65535 is background
    write_mask(tmp_path / "graded16.png", graded)
    write_mask(tmp_path / "zero_one16.png", box.astype(np.uint16))
    with Image.open(tmp_path / "graded16.png") as img:
        assert img.mode in ("I;16", "I")
    expected = {
        "clean16.png": ("", "16-bit gray"),
        "graded16.png": ("values other than 0 and 65535", "16-bit gray"),
        "zero_one16.png": ("", "16-bit gray and values 0/1 (read as 0/1)"),
    }
    for name, (problem, note) in expected.items():
        read = load_mask_checked(tmp_path / name, 30)
        assert (read.problem, read.note) == (problem, note), name
        assert "colour" not in read.problem
        assert np.array_equal(read.mask, nearest(box, 30)), name
        assert np.array_equal(load_mask_full(tmp_path / name), box), name
