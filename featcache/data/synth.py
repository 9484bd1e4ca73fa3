"""A synthetic dataset in the ISIC 2017 layout: images and masks rendered by `featcache.data.render`, written
with a contact sheet and a marker file, for tests and the demo."""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from featcache.core.errors import FeatcacheError
from featcache.core.interrupt import deferred_interrupt
from featcache.core.progress import progress_bar
from featcache.data.render import render_sample

# (split name, ISIC 2017 folder infix), in id order.
SPLITS: tuple[tuple[str, str], ...] = (
    ("train", "Training"),
    ("val", "Validation"),
    ("test", "Test_v2"),
)
CONTACT_SHEET_NAME = "contact_sheet.png"
MARKER_NAME = "synth.json"
JPEG_QUALITY = 92
CONTACT_SHEET_SIZE = 16  # training images shown, in a 4-column grid
THUMB_HW = (180, 240)  # (height, width) in px of one contact-sheet cell


_JPG_NAME = re.compile(r"ISIC_\d{7}\.jpg")
_MASK_NAME = re.compile(r"ISIC_\d{7}_segmentation\.png")


@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote.

    Attributes:
        out: dataset root, in the ISIC 2017 layout.
        counts: number of images per split, keys ``train``, ``val``, ``test``.
        contact_sheet: PNG grid of training thumbnails with mask outlines.
    """

    out: Path
    counts: dict[str, int]
    contact_sheet: Path


def data_dir(out: Path, split: str) -> Path:
    """Image folder of ``split`` (``train``, ``val`` or ``test``) under ``out``."""
    return out / f"ISIC-2017_{dict(SPLITS)[split]}_Data"


def truth_dir(out: Path, split: str) -> Path:
    """Mask folder of ``split`` (``train``, ``val`` or ``test``) under ``out``."""
    return out / f"ISIC-2017_{dict(SPLITS)[split]}_Part1_GroundTruth"


def isic_id(index: int) -> str:
    """ISIC-style id of image ``index``: ``ISIC_0000042`` for 42."""
    return f"ISIC_{index:07d}"


@dataclass(frozen=True)
class SynthConfig:
    """What ``featcache synth`` takes: the dataset root ``out``, images per split (``n_train`` >= 1, the others
    >= 0), ``image_size`` (H, W) in pixels for every image (None: varied ISIC-like sizes) and the dataset seed."""

    out: Path
    n_train: int = 40
    n_val: int = 10
    n_test: int = 10
    image_size: tuple[int, int] | None = None
    seed: int = 0


def synthesize(cfg: SynthConfig, *, progress: bool = False) -> SynthReport:
    """Write a synthetic ISIC 2017 Part 1 dataset (images, masks, contact sheet) to ``cfg.out``.

    Ids run on across splits: train gets ``ISIC_0000000`` to ``n_train - 1``, then val, then
    test. The same configuration gives the same bytes. ``out`` must be missing, empty, or an earlier
    synth output (which is replaced). ``progress``: a progress bar on stderr. Bad counts or size, or an
    ``out`` holding files synth did not write, end with one line.
    """
    out, seed, image_size = Path(cfg.out), cfg.seed, cfg.image_size
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    _check_arguments(counts, image_size, seed)
    _clear_previous_output(out)
    # The marker goes first so that a run cut short is still recognised, and replaced, as ours.
    out.mkdir(parents=True, exist_ok=True)
    marker = {
        "generator": "featcache.synth",
        "seed": seed,
        "counts": counts,
        "image_size": list(image_size) if image_size is not None else None,
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n")

    jobs: list[tuple[str, int]] = []
    for split, _ in SPLITS:
        data_dir(out, split).mkdir(parents=True)
        truth_dir(out, split).mkdir(parents=True)
        jobs += [(split, len(jobs) + i) for i in range(counts[split])]

    thumbnails: list[Image.Image] = []
    # Images are independent and numpy/PIL release the GIL, so threads give a real speed-up;
    # map() keeps id order, so the output does not depend on scheduling.
    with (
        deferred_interrupt() as interrupt,  # this thread waits on the workers' futures: Ctrl-C at an image's end
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        progress_bar("images", disable=not progress, remaining=True) as bar,
    ):
        task = bar.add_task("synth", total=len(jobs))
        for thumbnail in pool.map(partial(_write_sample, out=out, seed=seed, image_size=image_size), jobs):
            if thumbnail is not None:
                thumbnails.append(thumbnail)
            bar.advance(task)
            interrupt.check()

    contact_sheet = out / CONTACT_SHEET_NAME
    _contact_sheet(thumbnails).save(contact_sheet, format="PNG")
    return SynthReport(out=out, counts=counts, contact_sheet=contact_sheet)


def _write_sample(
    job: tuple[str, int], *, out: Path, seed: int, image_size: tuple[int, int] | None
) -> Image.Image | None:
    """Render image ``job`` = (split, index) and write its JPEG and mask PNG under ``out``.

    Returns its outlined thumbnail if it belongs on the contact sheet, else None.
    """
    split, index = job
    image, mask = render_sample(index, seed, image_size)
    name = isic_id(index)
    Image.fromarray(image).save(data_dir(out, split) / f"{name}.jpg", format="JPEG", quality=JPEG_QUALITY)
    Image.fromarray(mask).save(truth_dir(out, split) / f"{name}_segmentation.png", format="PNG")
    # Training ids start at 0, so these are the first training images.
    on_sheet = split == "train" and index < CONTACT_SHEET_SIZE
    return _outlined_thumbnail(image, mask) if on_sheet else None


# --- arguments and the output folder ------------------------------------------------------


def _check_arguments(counts: dict[str, int], image_size: tuple[int, int] | None, seed: int) -> None:
    """Refuse negative counts or seed, an empty training split and sizes below 8x8 px."""
    if seed < 0:
        raise FeatcacheError(f"synth seed must be >= 0, got {seed}; pass a non-negative seed")
    if counts["train"] < 1 or min(counts.values()) < 0:
        raise FeatcacheError(f"synth needs n_train >= 1 and n_val, n_test >= 0, got {counts}; pass larger counts")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 8):
        raise FeatcacheError(
            f"image_size must be (height, width) with both >= 8 px, got {image_size}; "
            "pass e.g. (48, 64) or leave it out for varied sizes"
        )


def _name_patterns(out: Path) -> dict[Path, re.Pattern[str]]:
    """Each split folder under ``out`` mapped to the file names `synthesize` writes there."""
    patterns = {data_dir(out, split): _JPG_NAME for split, _ in SPLITS}
    return patterns | {truth_dir(out, split): _MASK_NAME for split, _ in SPLITS}


def _foreign_entries(out: Path) -> list[Path]:
    """Files and folders in ``out`` (a directory) that `synthesize` does not write, sorted."""
    patterns = _name_patterns(out)
    foreign: list[Path] = []
    for entry in sorted(out.iterdir()):
        if entry in patterns and entry.is_dir():
            foreign += [f for f in sorted(entry.iterdir()) if not (f.is_file() and patterns[entry].fullmatch(f.name))]
        elif not (entry.is_file() and entry.name in (CONTACT_SHEET_NAME, MARKER_NAME)):
            foreign.append(entry)
    return foreign


def _clear_previous_output(out: Path) -> None:
    """Delete an earlier synth output in ``out``; refuse anything else that is there."""
    if out.exists() and not out.is_dir():
        raise FeatcacheError(f"synth output {out} is a file; pass a new or empty directory")
    if not out.exists() or not any(out.iterdir()):
        return
    if not (out / MARKER_NAME).is_file():
        raise FeatcacheError(
            f"{out} is not empty and is not a featcache synth output (no {MARKER_NAME}); pass a new or empty directory"
        )
    foreign = _foreign_entries(out)
    if foreign:
        raise FeatcacheError(
            f"{out} holds files that synth did not write (e.g. {foreign[0]}); "
            "remove them or pass a new or empty directory"
        )
    for folder in _name_patterns(out):
        if folder.is_dir():
            shutil.rmtree(folder)
    for name in (CONTACT_SHEET_NAME, MARKER_NAME):
        (out / name).unlink(missing_ok=True)


# --- smooth components, on the working grid -----------------------------------------------


def _outlined_thumbnail(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    """Thumbnail of ``image`` [H, W, 3] fitting THUMB_HW, ``mask`` [H, W] outlined 2 px green."""
    thumb = Image.fromarray(image)
    thumb.thumbnail(THUMB_HW[::-1], Image.Resampling.BILINEAR)
    small = Image.fromarray(mask).resize(thumb.size, Image.Resampling.NEAREST)
    # Dilation minus erosion by a 3x3 window: one pixel each side of the border.
    outline = np.asarray(small.filter(ImageFilter.MaxFilter(3))) != np.asarray(small.filter(ImageFilter.MinFilter(3)))
    pixels = np.array(thumb)
    pixels[outline] = (0, 255, 0)
    return Image.fromarray(pixels)


def _contact_sheet(thumbnails: list[Image.Image], columns: int = 4) -> Image.Image:
    """Grid of ``thumbnails``, ``columns`` wide, each centred in a THUMB_HW cell."""
    rows = -(-len(thumbnails) // columns)
    pad = 4
    cell_h, cell_w = THUMB_HW[0] + pad, THUMB_HW[1] + pad
    sheet = Image.new("RGB", (columns * cell_w + pad, rows * cell_h + pad), (32, 32, 32))
    for i, thumb in enumerate(thumbnails):
        top = pad + (i // columns) * cell_h + (THUMB_HW[0] - thumb.height) // 2
        left = pad + (i % columns) * cell_w + (THUMB_HW[1] - thumb.width) // 2
        sheet.paste(thumb, (left, top))
    return sheet
