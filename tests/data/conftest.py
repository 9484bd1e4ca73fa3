"""Fixtures and writers of the data tests: tiny image/mask layouts of ISIC 2017, ISIC 2018 and plain folders."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import lesion_mask, write_mask

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
