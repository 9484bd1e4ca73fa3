"""The sample index and splits of ISIC 2017, ISIC 2018 and plain folders.

`find_samples` turns a dataset folder into a `SampleIndex` (one `Sample` per image/mask pair,
with its split and original size); `featcache.data.loading` reads the files.

Accepted layouts (each folder may be nested once or more as `X/X/`, as some unzips do):

- ``isic2017``: ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_<7 digits>.jpg`` with masks in
  ``ISIC-2017_{Training,Validation,Test_v2}_Part1_GroundTruth/ISIC_<id>_segmentation.png``
  (``Test`` without ``_v2`` is accepted too; superpixels, metadata and other files are ignored).
- ``isic2018``: ``ISIC2018_Task1-2_{Training,Validation,Test}_Input/ISIC_<id>.jpg`` with masks in
  ``ISIC2018_Task1_{Training,Validation,Test}_GroundTruth/ISIC_<id>_segmentation.png``.
- ``folders``: ``images/<stem>.{jpg,jpeg,png,bmp,tif,tiff}`` with masks
  ``masks/<stem>.png`` or ``masks/<stem>_segmentation.png``; training split only.

Splits that the layout does not provide are drawn from the training images (see `SplitConfig`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from featcache.core.errors import BadFileError, FeatcacheError, OptionError
from featcache.core.runtime import err_console

SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}
SHOWN = 5  # names listed in a message before ", ..."

# A parser maps a file name to its key (image id or mask stem), or None to ignore the file.
_Parser = Callable[[str], str | None]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Sample:
    """One image/mask pair.

    `id` is the ISIC id (``ISIC_0000000``) or the image file stem; `split` is "train", "val" or
    "test"; `orig_hw` is the original image (height, width) in pixels.
    """

    id: str
    image: Path
    mask: Path
    split: str
    orig_hw: tuple[int, int]


@dataclass
class SplitConfig:
    """How to draw the splits a layout lacks from its training images.

    Only used when the layout has no validation and/or test folder; official folders are always
    kept. `val_fraction` and `test_fraction` are fractions of the training folder's image count
    (each rounded to the nearest integer, at least one image when the fraction is above zero);
    only the missing splits are drawn, the rest stays in train. The draw permutes the sorted
    training ids with ``numpy.random.default_rng(seed)``, so it does not depend on directory
    listing order.
    """

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        fractions = {"--val-fraction": self.val_fraction, "--test-fraction": self.test_fraction}
        for option, value in fractions.items():
            if not 0.0 <= value < 1.0:
                raise OptionError(f"{option} {value} is out of range; use a value in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise FeatcacheError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} "
                "leaves no training images; make their sum smaller than 1"
            )


@dataclass
class SampleIndex:
    """Every sample of a dataset folder with its split, and where the splits came from.

    `samples` is sorted by split (train, val, test), then id. `split_note` is a sentence saying
    which splits were drawn from the training folder ("" when all are official); `split_config`
    is the `SplitConfig` used for that draw (None when none was drawn). `skipped` lists, relative
    to `root`, the unpaired files left out by ``find_samples(..., skip_unpaired=True)`` and the
    symbolic links that lead nowhere.
    """

    root: Path
    layout: str
    samples: list[Sample]
    split_note: str
    split_config: SplitConfig | None
    skipped: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        """The samples of split `name` ("train", "val" or "test"), sorted by id."""
        if name not in SPLITS:
            raise FeatcacheError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, int]:
        """Number of samples per split, in the order train, val, test."""
        return {name: len(self.split(name)) for name in SPLITS}

    def fingerprint(self) -> str:
        """sha256 hex digest over the sorted (path relative to root, size in bytes) of all files.

        Detects added, removed, renamed and resized images and masks, not same-size edits.
        """
        files = [path for s in self.samples for path in (s.image, s.mask)]
        rows = sorted((p.relative_to(self.root).as_posix(), p.stat().st_size) for p in files)
        digest = hashlib.sha256()
        for relative, size in rows:
            digest.update(f"{relative}\t{size}\n".encode())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, object]:
        """JSON-able provenance: root, layout, counts, split note/config, fingerprint, skipped."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "counts": self.counts(),
            "split_note": self.split_note,
            "split_config": asdict(self.split_config) if self.split_config else None,
            "fingerprint": self.fingerprint(),
            "skipped": list(self.skipped),
        }


@dataclass(frozen=True)
class _Layout:
    """Folder names per split (first existing candidate wins) and file-name parsers."""

    name: str
    image_dirs: dict[str, tuple[str, ...]]
    mask_dirs: dict[str, tuple[str, ...]]
    image_key: _Parser
    mask_key: _Parser


def _regex_parser(pattern: str) -> _Parser:
    """Parser returning group 1 of `pattern` when it matches the whole file name."""
    compiled = re.compile(pattern)

    def parse(name: str) -> str | None:
        match = compiled.fullmatch(name)
        return match.group(1) if match else None

    return parse


def _stem_parser(extensions: frozenset[str]) -> _Parser:
    """Parser returning the file stem when the (case-insensitive) extension is in `extensions`."""

    def parse(name: str) -> str | None:
        path = Path(name)
        return path.stem if path.suffix.lower() in extensions else None

    return parse


def _isic_layout(
    name: str, prefix: str, image_suffix: str, *, mask_infix: str, mask_suffix: str, splits: dict[str, tuple[str, ...]]
) -> _Layout:
    """ISIC layout: ``<prefix><split><image_suffix>`` and ``<mask_infix><split><mask_suffix>``."""
    return _Layout(
        name=name,
        image_dirs={s: tuple(f"{prefix}{w}{image_suffix}" for w in words) for s, words in splits.items()},
        mask_dirs={s: tuple(f"{mask_infix}{w}{mask_suffix}" for w in words) for s, words in splits.items()},
        image_key=_regex_parser(r"(ISIC_\d{7})\.jpg"),
        mask_key=_regex_parser(r"(ISIC_\d{7}_segmentation)\.png"),
    )


_LAYOUTS: tuple[_Layout, ...] = (
    _isic_layout(
        "isic2017",
        "ISIC-2017_",
        "_Data",
        mask_infix="ISIC-2017_",
        mask_suffix="_Part1_GroundTruth",
        splits={"train": ("Training",), "val": ("Validation",), "test": ("Test_v2", "Test")},
    ),
    _isic_layout(
        "isic2018",
        "ISIC2018_Task1-2_",
        "_Input",
        mask_infix="ISIC2018_Task1_",
        mask_suffix="_GroundTruth",
        splits={"train": ("Training",), "val": ("Validation",), "test": ("Test",)},
    ),
    _Layout(
        name="folders",
        image_dirs={"train": ("images",)},
        mask_dirs={"train": ("masks",)},
        image_key=_stem_parser(IMAGE_EXTENSIONS),
        mask_key=_stem_parser(frozenset({".png"})),
    ),
)

_ACCEPTED = (
    "isic2017 (ISIC-2017_Training_Data/ + ISIC-2017_Training_Part1_GroundTruth/), "
    "isic2018 (ISIC2018_Task1-2_Training_Input/ + ISIC2018_Task1_Training_GroundTruth/), "
    "folders (images/ + masks/)"
)


def _resolve_dir(root: Path, candidates: Sequence[str]) -> Path | None:
    """First existing `root/<name>` among `candidates`, descending nested `X/X/` folders."""
    for name in candidates:
        folder = root / name
        if folder.is_dir():
            while (folder / name).is_dir():
                folder = folder / name
            return folder
    return None


def _list_files(folder: Path | None, key: _Parser) -> tuple[dict[str, Path], list[Path]]:
    """Map key -> file for the files of `folder` that `key` accepts (empty when folder is None).

    Also returns the symbolic links `key` accepts that lead nowhere (a loop, a missing target): never an
    image, but not to be dropped without a word either.
    """
    found: dict[str, Path] = {}
    broken: list[Path] = []
    if folder is None:
        return found, broken
    for path in sorted(folder.iterdir()):
        name = key(path.name)
        if name is None:
            continue
        if not path.is_file():
            if path.is_symlink() and not path.exists():
                broken.append(path)
            continue
        if name in found:
            raise FeatcacheError(f"{path} and {found[name]} have the same name {name!r}; rename or remove one")
        found[name] = path
    return found, broken


def _pair(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, *, mask_dir: Path, skip_unpaired: bool
) -> tuple[dict[str, tuple[Path, Path]], list[Path]]:
    """Pair image ids with mask stems ``<id>_segmentation`` or ``<id>``.

    Returns id -> (image, mask) and the unpaired files. Unpaired files raise a FeatcacheError
    unless `skip_unpaired` is true.
    """
    pairs: dict[str, tuple[Path, Path]] = {}
    lone_images: list[str] = []
    claimed: set[str] = set()
    for image_id, image in sorted(images.items()):
        stem = next((k for k in (f"{image_id}_segmentation", image_id) if k in masks and k not in claimed), None)
        if stem is None:
            lone_images.append(image_id)
            continue
        claimed.add(stem)
        pairs[image_id] = (image, masks[stem])
    lone_masks = sorted(set(masks) - claimed)
    if (lone_images or lone_masks) and not skip_unpaired:
        raise FeatcacheError(
            f"{_describe_unpaired(lone_images, image_dir, f'images without masks in {mask_dir}')}"
            f"{_describe_unpaired(lone_masks, mask_dir, f'masks without images in {image_dir}')}"
            "add the missing files or remove these, or pass --skip-unpaired to leave them out"
        )
    unpaired = [images[i] for i in lone_images] + [masks[m] for m in lone_masks]
    return pairs, unpaired


def shown(names: Sequence[str]) -> str:
    """The first `SHOWN` of ``names``, comma-separated, with ", ..." when there are more."""
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "")


def _describe_unpaired(keys: list[str], folder: Path, what: str) -> str:
    """'<folder>: N <what> (first ids...); ' or '' when `keys` is empty."""
    if not keys:
        return ""
    return f"{folder}: {len(keys)} {what} ({shown(keys)}); "


def header_hw(path: Path) -> tuple[int, int]:
    """(height, width) in pixels from the file header, without decoding pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError) as err:
        raise bad_file(path, err) from err
    return height, width


def _unreadable(*paths: Path) -> bool:
    """Whether any of ``paths`` has a header PIL cannot read (as opposed to, say, a size mismatch)."""
    for path in paths:
        try:
            with Image.open(path):
                pass
        except (OSError, UnidentifiedImageError):
            return True
    return False


def bad_file(path: Path, err: Exception) -> BadFileError:
    """The error for an unreadable image or mask file."""
    return BadFileError(f"{path}: cannot read image ({err}); replace the file")


def _make_sample(image_id: str, image: Path, mask: Path, *, split: str) -> Sample:
    """Sample with `orig_hw` from the image header; the mask header must give the same size."""
    image_hw = header_hw(image)
    mask_hw = header_hw(mask)
    if mask_hw != image_hw:
        raise FeatcacheError(
            f"mask {mask} is {mask_hw[1]}x{mask_hw[0]} but image {image} is "
            f"{image_hw[1]}x{image_hw[0]} (width x height); replace the mask with one of the "
            "image's size"
        )
    return Sample(id=image_id, image=image, mask=mask, split=split, orig_hw=image_hw)


def _draw_splits(root: Path, train_ids: list[str], missing: list[str], *, config: SplitConfig) -> dict[str, str]:
    """Map each drawn training id to its new split ("val" or "test").

    The sorted ids are permuted with ``default_rng(config.seed)``; val is taken first, then test.
    """
    n = len(train_ids)
    sizes = {s: _draw_size(_fraction(config, s), n) for s in missing}
    if sum(sizes.values()) >= n:
        raise FeatcacheError(
            f"{root}: only {n} training images, too few to draw {' and '.join(missing)} from; "
            "add images or lower --val-fraction/--test-fraction"
        )
    order = np.random.default_rng(config.seed).permutation(n)
    drawn: dict[str, str] = {}
    start = 0
    for name in missing:
        for position in order[start : start + sizes[name]]:
            drawn[train_ids[position]] = name
        start += sizes[name]
    return drawn


def _fraction(config: SplitConfig, split: str) -> float:
    """The fraction of the training images `config` draws for `split` ("val" or "test")."""
    return config.val_fraction if split == "val" else config.test_fraction


def _draw_size(fraction: float, n: int) -> int:
    """round(fraction * n), but at least 1 when fraction > 0."""
    return max(1, round(fraction * n)) if fraction > 0 else 0


def _split_note(missing: list[str], config: SplitConfig) -> str:
    """Sentence naming the drawn splits, the seed and the fractions."""
    words = " and ".join(_SPLIT_WORDS[s] for s in missing)
    fractions = ", ".join(f"{_fraction(config, s) * 100:g}% {s}" for s in missing)
    return f"{words} drawn from the training folder (seed {config.seed}: {fractions})"


def _find_layout(root: Path) -> _Layout:
    """The first layout whose training image folder exists under `root`."""
    for layout in _LAYOUTS:
        if _resolve_dir(root, layout.image_dirs["train"]) is not None:
            return layout
    raise FeatcacheError(f"{root}: no recognised dataset layout; expected one of {_ACCEPTED}")


def _collect_pairs(
    root: Path, layout: _Layout, skip_unpaired: bool, *, strict: bool
) -> tuple[dict[str, dict[str, tuple[Path, Path]]], list[Path]]:
    """Per split of `layout`: id -> (image, mask); plus the files left out: unpaired (see `_pair`) and broken links.

    A symbolic link that leads nowhere is left out with a warning on stderr, or refused when `strict`.
    """
    pairs: dict[str, dict[str, tuple[Path, Path]]] = {}
    skipped: list[Path] = []
    broken: list[Path] = []
    for name, image_names in layout.image_dirs.items():
        mask_names = layout.mask_dirs[name]
        image_dir = _resolve_dir(root, image_names)
        mask_dir = _resolve_dir(root, mask_names)
        images, broken_images = _list_files(image_dir, layout.image_key)
        masks, broken_masks = _list_files(mask_dir, layout.mask_key)
        broken += broken_images + broken_masks
        if name == "train" and not images:
            raise FeatcacheError(f"{image_dir}: no images in the training folder; put the training images there")
        pairs[name], unpaired = _pair(
            images,
            masks,
            image_dir or root / image_names[0],
            mask_dir=mask_dir or root / mask_names[0],
            skip_unpaired=skip_unpaired,
        )
        skipped.extend(unpaired)
    if broken:
        listed = shown([str(p) for p in broken])
        if strict:
            raise FeatcacheError(
                f"{len(broken)} symbolic links lead nowhere (a loop or a missing target): {listed}; "
                "remove them or point them at their files, or drop --strict to leave them out"
            )
        err_console.print(
            f"warning: left out {len(broken)} symbolic links that lead nowhere (a loop or a missing target): {listed}; "
            "remove them or point them at their files",
            markup=False,
            highlight=False,
        )
        skipped.extend(broken)
    if not pairs["train"]:
        raise FeatcacheError(f"{root}: no training image has a mask; add the masks to the training mask folder")
    return pairs, skipped


def find_samples(
    root: Path,
    split: SplitConfig | None = None,
    skip_unpaired: bool = False,
    *,
    skip_bad: bool = False,
    strict: bool = False,
) -> SampleIndex:
    """Index the image/mask pairs under `root` (layouts in the module docstring).

    Splits the layout lacks (no folder, or no pairs in it) are drawn from the training pairs with
    `split` (default ``SplitConfig()``); `split` is ignored when every split has its folder.
    Unpaired images or masks raise a FeatcacheError, or with `skip_unpaired` are left out and
    listed in ``SampleIndex.skipped``. Reads every file header (not pixels) for `orig_hw`; a file
    whose header is unreadable raises, or with `skip_bad` is left out and listed in ``skipped``.
    The splits are drawn before bad files are left out, so they do not depend on `skip_bad`.
    Symbolic links named like images or masks that lead nowhere (a loop, a missing target) are left
    out with a warning line on stderr and listed in ``skipped``, or with `strict` refused.
    """
    root = Path(root)
    if not root.is_dir():
        raise FeatcacheError(f"{root}: dataset folder not found; check the path")
    layout = _find_layout(root)
    pairs, skipped = _collect_pairs(root, layout, skip_unpaired, strict=strict)
    missing = [name for name in SPLITS[1:] if not pairs.get(name)]
    config = (split or SplitConfig()) if missing else None
    drawn = _draw_splits(root, sorted(pairs["train"]), missing, config=config) if config else {}
    made = []
    for name, found in pairs.items():
        for image_id, (image, mask) in found.items():
            try:
                made.append(
                    _make_sample(image_id, image, mask, split=drawn.get(image_id, name) if name == "train" else name)
                )
            except FeatcacheError:
                if not skip_bad or not _unreadable(image, mask):
                    raise
                skipped.append(image)
    samples = sorted(made, key=lambda s: (SPLITS.index(s.split), s.id))
    seen: dict[str, Sample] = {}
    for sample in samples:
        if sample.id in seen:
            raise FeatcacheError(
                f"{sample.image} and {seen[sample.id].image} share the id {sample.id!r} (in "
                f"{seen[sample.id].split} and "
                f"{sample.split}); an image may be in one split only: remove one"
            )
        seen[sample.id] = sample
    return SampleIndex(
        root=root,
        layout=layout.name,
        samples=samples,
        split_note=_split_note(missing, config) if config else "",
        split_config=config,
        skipped=sorted(p.relative_to(root).as_posix() for p in skipped),
    )
