"""featcache.data.layouts: layouts, splits, pairing, fingerprints. Tiny images in tmp_path."""

import json
from pathlib import Path

import pytest

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import Sample, SplitConfig, find_samples
from tests.data.conftest import FOLDERS, ISIC2017, ISIC2018, H, W, isic_ids, write_image, write_layout
from tests.helpers import lesion_mask, write_mask


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


def test_fingerprint_changes_when_a_file_changes(isic2017: Path) -> None:
    before = find_samples(isic2017).fingerprint()
    assert find_samples(isic2017).fingerprint() == before
    write_image(isic2017 / "ISIC-2017_Test_v2_Data" / "ISIC_0000021.jpg", seed=99)
    assert find_samples(isic2017).fingerprint() != before
