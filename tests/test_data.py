"""Tests for featcache.data: layouts, splits, pairing, loading, dataset. Tiny images in tmp_path."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import lesion_mask, write_mask
from featcache.data import (
    Sample,
    SampleDataset,
    SplitConfig,
    find_samples,
    load_image,
    load_mask,
    load_mask_checked,
    load_mask_full,
)
from featcache.errors import FeatcacheError

W, H = 56, 40  # tiny image width, height in pixels

ISIC2017 = {
    "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
}
ISIC2018 = {
    "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
}
FOLDERS = {"train": ("images", "masks")}


def isic_ids(start: int, n: int) -> list[str]:
    return [f"ISIC_{i:07d}" for i in range(start, start + n)]


def write_image(path: Path, size: tuple[int, int] = (W, H), seed: int = 0) -> None:
    """Random RGB image of size (width, height); format from the suffix."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_layout(
    root: Path,
    folders: dict[str, tuple[str, str]],
    ids: dict[str, list[str]],
    nested: bool = False,
    image_ext: str = ".jpg",
    mask_suffix: str = "_segmentation.png",
) -> None:
    """Write `ids[split]` images and masks into the split's (image, mask) folders."""
    for split, split_ids in ids.items():
        image_dir, mask_dir = (root / name / name if nested else root / name for name in folders[split])
        for i, sample_id in enumerate(split_ids):
            write_image(image_dir / f"{sample_id}{image_ext}", seed=i)
            write_mask(mask_dir / f"{sample_id}{mask_suffix}", lesion_mask(W, H))


@pytest.fixture
def isic2017(tmp_path: Path) -> Path:
    write_layout(tmp_path, ISIC2017, {"train": isic_ids(10, 6), "val": isic_ids(0, 2), "test": isic_ids(20, 3)})
    return tmp_path


def ids_of(samples: list[Sample]) -> list[str]:
    return [s.id for s in samples]


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("name, folders", [("isic2017", ISIC2017), ("isic2018", ISIC2018)])
def test_isic_layouts_official_splits(tmp_path: Path, name: str, folders: dict, nested: bool) -> None:
    write_layout(
        tmp_path,
        folders,
        {"train": isic_ids(10, 6)[::-1], "val": isic_ids(0, 2), "test": isic_ids(20, 3)},
        nested=nested,
    )
    index = find_samples(tmp_path)
    assert index.layout == name
    assert index.counts() == {"train": 6, "val": 2, "test": 3}
    assert ids_of(index.split("train")) == isic_ids(10, 6)
    assert ids_of(index.split("test")) == isic_ids(20, 3)
    assert [s.split for s in index.samples] == ["train"] * 6 + ["val"] * 2 + ["test"] * 3
    assert index.split_note == "" and index.split_config is None
    sample = index.samples[0]
    assert sample.orig_hw == (H, W)
    assert sample.image.name == "ISIC_0000010.jpg"
    assert sample.mask.name == "ISIC_0000010_segmentation.png"


def test_isic2017_test_folder_without_v2(tmp_path: Path) -> None:
    folders = {**ISIC2017, "test": ("ISIC-2017_Test_Data", "ISIC-2017_Test_Part1_GroundTruth")}
    write_layout(tmp_path, folders, {"train": isic_ids(0, 4), "val": isic_ids(4, 1), "test": isic_ids(5, 2)})
    assert find_samples(tmp_path).counts() == {"train": 4, "val": 1, "test": 2}


def test_isic2017_skips_superpixels_metadata_and_other_files(isic2017: Path) -> None:
    data = isic2017 / "ISIC-2017_Training_Data"
    write_image(data / "ISIC_0000010_superpixels.png")
    (data / "ISIC-2017_Training_Data_metadata.csv").write_text("image_id,age\n")
    (data / "LICENSE.txt").write_text("license")
    (data / "notes").mkdir()
    index = find_samples(isic2017)
    assert ids_of(index.split("train")) == isic_ids(10, 6)
    assert index.skipped == []


def test_folders_layout_extensions_mask_names_and_drawn_splits(tmp_path: Path) -> None:
    stems = [f"img{i:02d}" for i in range(20)]
    extensions = [".jpg", ".JPEG", ".png", ".bmp", ".tif", ".TIFF"]
    for i, stem in enumerate(stems):
        write_image(tmp_path / "images" / f"{stem}{extensions[i % len(extensions)]}", seed=i)
        write_mask(tmp_path / "masks" / (f"{stem}.png" if i % 2 else f"{stem}_segmentation.png"), lesion_mask(W, H))
    index = find_samples(tmp_path)
    assert index.layout == "folders"
    assert index.counts() == {"train": 14, "val": 3, "test": 3}
    assert sorted(ids_of(index.samples)) == stems
    for split in ("train", "val", "test"):
        assert ids_of(index.split(split)) == sorted(ids_of(index.split(split)))
    assert index.split_note == ("validation and test drawn from the training folder (seed 0: 15% val, 15% test)")
    assert all(s.mask.stem in (s.id, f"{s.id}_segmentation") for s in index.samples)


def test_seeded_split_deterministic_disjoint_fractions_recorded(tmp_path: Path) -> None:
    write_layout(tmp_path, FOLDERS, {"train": [f"s{i:03d}" for i in range(40)]}, image_ext=".png")
    config = SplitConfig(val_fraction=0.25, test_fraction=0.1, seed=3)
    first, again = find_samples(tmp_path, config), find_samples(tmp_path, config)
    assert first.samples == again.samples
    parts = {name: set(ids_of(first.split(name))) for name in ("train", "val", "test")}
    assert [len(p) for p in parts.values()] == [26, 10, 4]
    assert set.union(*parts.values()) == {f"s{i:03d}" for i in range(40)}
    other = find_samples(tmp_path, SplitConfig(val_fraction=0.25, test_fraction=0.1, seed=4))
    assert set(ids_of(other.split("val"))) != parts["val"]
    assert first.split_note == ("validation and test drawn from the training folder (seed 3: 25% val, 10% test)")
    provenance = json.loads(json.dumps(first.to_dict()))
    assert provenance["split_config"] == {"val_fraction": 0.25, "test_fraction": 0.1, "seed": 3}
    assert provenance["split_note"] == first.split_note
    assert provenance["counts"] == {"train": 26, "val": 10, "test": 4}
    assert provenance["layout"] == "folders" and provenance["root"] == str(tmp_path)


def test_only_missing_split_is_drawn(tmp_path: Path) -> None:
    write_layout(tmp_path, ISIC2017, {"train": isic_ids(0, 20), "val": isic_ids(100, 2)})
    index = find_samples(tmp_path, SplitConfig(test_fraction=0.2))
    assert index.counts() == {"train": 16, "val": 2, "test": 4}
    assert ids_of(index.split("val")) == isic_ids(100, 2)
    assert index.split_note == "test drawn from the training folder (seed 0: 20% test)"


def test_split_config_rejects_bad_fractions() -> None:
    with pytest.raises(FeatcacheError, match="--val-fraction"):
        SplitConfig(val_fraction=1.5)
    with pytest.raises(FeatcacheError, match="smaller than 1"):
        SplitConfig(val_fraction=0.6, test_fraction=0.5)


def test_unpaired_files_listed_or_skipped(isic2017: Path) -> None:
    (isic2017 / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000011_segmentation.png").unlink()
    write_mask(isic2017 / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000099_segmentation.png", lesion_mask(W, H))
    with pytest.raises(FeatcacheError) as raised:
        find_samples(isic2017)
    message = str(raised.value)
    assert "\n" not in message
    assert "1 images without masks in " in message and "(ISIC_0000011)" in message
    assert "1 masks without images in " in message and "(ISIC_0000099_segmentation)" in message
    assert "ISIC-2017_Training_Data" in message and "--skip-unpaired" in message

    index = find_samples(isic2017, skip_unpaired=True)
    assert "ISIC_0000011" not in ids_of(index.samples)
    assert index.counts()["train"] == 5
    assert index.skipped == [
        "ISIC-2017_Training_Data/ISIC_0000011.jpg",
        "ISIC-2017_Training_Part1_GroundTruth/ISIC_0000099_segmentation.png",
    ]
    assert index.to_dict()["skipped"] == index.skipped


def test_unpaired_error_shows_first_few_ids(tmp_path: Path) -> None:
    write_layout(tmp_path, FOLDERS, {"train": [f"a{i}" for i in range(3)]}, image_ext=".png")
    for i in range(8):
        write_image(tmp_path / "images" / f"z{i}.png")
    shown = r"8 images without masks in \S+masks \(z0, z1, z2, z3, z4, \.\.\.\)"
    with pytest.raises(FeatcacheError, match=shown):
        find_samples(tmp_path)


def test_missing_root_unknown_layout_empty_training_folder(tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="not found"):
        find_samples(tmp_path / "nowhere")
    (tmp_path / "stuff").mkdir()
    with pytest.raises(FeatcacheError, match=r"no recognised dataset layout.*isic2017.*folders"):
        find_samples(tmp_path)
    (tmp_path / "ISIC-2017_Training_Data").mkdir()
    with pytest.raises(FeatcacheError, match="ISIC-2017_Training_Data: no images"):
        find_samples(tmp_path)


def test_mask_size_mismatch_names_both_files(isic2017: Path) -> None:
    mask = isic2017 / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000012_segmentation.png"
    write_mask(mask, lesion_mask(W + 1, H))
    with pytest.raises(FeatcacheError) as raised:
        find_samples(isic2017)
    assert str(mask) in str(raised.value)
    assert "ISIC_0000012.jpg" in str(raised.value)


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


def test_fingerprint_changes_when_a_file_changes(isic2017: Path) -> None:
    before = find_samples(isic2017).fingerprint()
    assert find_samples(isic2017).fingerprint() == before
    write_image(isic2017 / "ISIC-2017_Test_v2_Data" / "ISIC_0000021.jpg", seed=99)
    assert find_samples(isic2017).fingerprint() != before


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


def lesion_box(h: int = 20, w: int = 30) -> np.ndarray:
    """Bool [h, w]: a lesion rectangle."""
    box = np.zeros((h, w), bool)
    box[5:15, 5:25] = True
    return box


def nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Bool [H, W] -> uint8 [size, size] 0/1, resized nearest-neighbour."""
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST))


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
