"""Reading one image or mask: decoded, resized and (masks) binarised; `SampleDataset` serves samples to a
`torch.utils.data.DataLoader`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from featcache.core.errors import FeatcacheError
from featcache.data.layouts import Sample, bad_file

_T = TypeVar("_T")


def _open_decoded(path: Path, convert: Callable[[Image.Image], _T]) -> _T:
    """Open `path`, apply `convert` (which decodes), turning decode failures into FeatcacheError."""
    try:
        with Image.open(path) as img:
            return convert(img)
    except (OSError, UnidentifiedImageError) as err:
        raise bad_file(path, err) from err


def load_image(path: Path, size: int) -> np.ndarray:
    """Image as uint8 [3, size, size] RGB (0..255), aspect ratio not kept.

    JPEGs are decoded with ``draft`` at the smallest DCT scale (1/2, 1/4, 1/8) that still gives
    at least size x size pixels, which makes multi-megapixel files fast; the final resize to
    size x size is PIL's bilinear filter, whose support widens with the reduction factor when
    downscaling, so it averages over the source area (antialiased), unlike a plain 2x2 bilinear
    sample. ``reducing_gap=None`` keeps it a single exact bilinear pass.
    """

    def convert(img: Image.Image) -> Image.Image:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))
        rgb = img.convert("RGB")
        return rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)

    pixels = np.asarray(_open_decoded(path, convert))  # [S, S, 3]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class MaskRead(NamedTuple):
    """A mask read as 0/1 labels, and what a reader should hear about the file.

    ``mask``: uint8 ``[H, W]`` of 0/1. ``problem``: what had to be guessed to binarise it (colour
    converted to gray, levels other than 0 and white cut at the middle; "" when nothing was):
    ``extract --strict`` refuses any. ``note``: an unambiguous but unusual encoding, read as it is and
    said once, never refused ("16-bit gray", "values 0/1 (read as 0/1)", both, or "").
    """

    mask: np.ndarray
    problem: str
    note: str


#: PIL modes of gray images deeper than 8 bits (16-bit PNGs open as I;16 or, in older Pillow, I).
_DEEP_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ZERO_ONE_NOTE = "values 0/1 (read as 0/1)"


def _gray_scale(img: Image.Image) -> tuple[Image.Image, int, list[str], list[str]]:
    """A decoded mask as gray at its own depth, the white of its scale, and its problems and notes so far.

    The scale is 0..1 when the mask's largest value is 1 (lesion stored as 1), else its bit depth's:
    0..255, or 0..65535 for 16-bit gray (PIL's own conversion of those to 8 bits clips at 255, which
    would make any level above 127 of 65535 lesion). Colour is converted to 8-bit gray first.
    """
    problems, notes = [], []
    if img.mode in _DEEP_GRAY_MODES:
        # As 32-bit I: Pillow's nearest-neighbour resize of I;16 picks other rows than that of L and I when upscaling.
        gray, white = img if img.mode == "F" else img.convert("I"), 65535
        notes.append("16-bit gray")
    else:
        if img.mode not in ("L", "1", "P"):
            problems.append(f"{img.mode} colour")
        gray, white = img.convert("L"), 255
    if gray.getextrema()[1] == 1:
        white = 1
        notes.append(ZERO_ONE_NOTE)
    return gray, white, problems, notes


def load_mask(path: Path, size: int) -> np.ndarray:
    """Mask as uint8 [size, size] of 0/1 (see `load_mask_checked`)."""
    return load_mask_checked(path, size).mask


def load_mask_checked(path: Path, size: int) -> MaskRead:
    """Mask as uint8 [size, size] of 0/1, resized nearest-neighbour, with what was guessed or unusual.

    A level in the upper half of the mask's scale (see `_gray_scale`) is lesion: > 127 for 8-bit
    gray, > 32767 for 16-bit gray, 1 for a mask stored as 0/1. Levels other than 0 and the scale's
    white are a problem, looked for after resizing (nearest neighbour keeps levels, not all pixels).
    """

    def read(img: Image.Image) -> MaskRead:
        gray, white, problems, notes = _gray_scale(img)
        small = np.asarray(gray.resize((size, size), Image.Resampling.NEAREST))
        if not ((small == 0) | (small == white)).all():
            problems.append(f"values other than 0 and {white}")
        return MaskRead((small > white / 2).astype(np.uint8), " and ".join(problems), " and ".join(notes))

    return _open_decoded(path, read)


def load_mask_full(path: Path) -> np.ndarray:
    """Mask as uint8 [H, W] of 0/1 at its original resolution, binarised as `load_mask_checked` does."""

    def read(img: Image.Image) -> np.ndarray:
        gray, white, _, _ = _gray_scale(img)
        return (np.asarray(gray) > white / 2).astype(np.uint8)

    return _open_decoded(path, read)


class SampleDataset(Dataset):
    """Samples loaded at size x size pixels, for a DataLoader (picklable, worker-safe).

    Item i is ``{"index": i, "image": uint8 tensor [3, S, S], "mask": uint8 tensor [S, S] of 0/1,
    "error": str, "mask_problem": str, "mask_note": str}``. With ``catch_errors`` an unreadable file
    gives zero tensors and its one-line message under ``error`` instead of raising (an exception
    raised in a worker would reach the caller as a multi-line traceback); ``mask_problem`` and
    ``mask_note`` are `MaskRead`'s ``problem`` and ``note``.
    """

    def __init__(self, samples: Sequence[Sample], size: int, catch_errors: bool = False) -> None:
        self.samples = list(samples)
        self.size = size
        self.catch_errors = catch_errors

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, int | str | torch.Tensor]:
        sample = self.samples[index]
        try:
            image = load_image(sample.image, self.size)
            mask, problem, note = load_mask_checked(sample.mask, self.size)
            error = ""
        except FeatcacheError as err:
            if not self.catch_errors:
                raise
            image = np.zeros((3, self.size, self.size), np.uint8)
            mask, problem, note, error = np.zeros((self.size, self.size), np.uint8), "", "", str(err)
        return {
            "index": index,
            "image": torch.from_numpy(image),
            "mask": torch.from_numpy(mask),
            "error": error,
            "mask_problem": problem,
            "mask_note": note,
        }
