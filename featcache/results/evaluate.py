"""``featcache evaluate``: predicted masks in a folder scored against truth masks, matched by name."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.io import atomic_path, write_json
from featcache.core.runtime import err_console
from featcache.data.layouts import IMAGE_EXTENSIONS, bad_file, shown
from featcache.results.metrics import COUNTS, METRICS, check_convention, confusion, mean_scores, scores

_ID = re.compile(r"ISIC_\d{7}")
_TRUTH_NAME = re.compile(r"(ISIC_\d{7})_segmentation\.png")
_MASK_INFIX = "_segmentation"


@dataclass
class Evaluation:
    """Scores of a prediction folder against ground truth.

    `mean`: metric -> mean over images. `per_image`: one dict per image, sorted by id, with
    ``id`` (``ISIC_<7 digits>``, or the image stem), the six `METRICS` and the counts ``tp, fp, fn, tn``.
    `unpredicted`: how many truth masks had no prediction and were left out.
    """

    mean: dict[str, float]
    per_image: list[dict]
    convention: str
    unpredicted: int = 0  # truth masks without a prediction (not scored)

    def to_json(self, path: Path) -> None:
        """Write ``{"convention", "mean", "per_image", "unpredicted"}`` as JSON, atomically."""
        write_json(
            path,
            {
                "convention": self.convention,
                "mean": self.mean,
                "per_image": self.per_image,
                "unpredicted": self.unpredicted,
            },
        )

    def to_csv(self, path: Path) -> None:
        """Write one row per image (columns: id, the metrics, the counts), atomically."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", *METRICS, *COUNTS])
            writer.writeheader()
            writer.writerows(self.per_image)


def _isic_id(name: str) -> str | None:
    """``ISIC_<7 digits>`` found anywhere in a prediction's file name."""
    match = _ID.search(name)
    return match.group(0) if match else None


def _isic_truth_id(name: str) -> str | None:
    """``ISIC_<7 digits>`` of a truth file named ``ISIC_<id>_segmentation.png``."""
    match = _TRUTH_NAME.search(name)
    return match.group(1) if match else None


def _stem_key(name: str) -> str:
    """The image stem of ``<stem>_segmentation.png`` or ``<stem>.png`` (what predict and plain layouts write)."""
    stem = Path(name).stem
    return stem.removesuffix(_MASK_INFIX) or stem


def _files_by_key(
    folder: Path,
    key: Callable[[str], str | None],
    what: str,
    *,
    naming: str,
    suffixes: frozenset[str] = IMAGE_EXTENSIONS,
) -> dict[str, Path]:
    """Image id -> file, for the files of `folder` with one of `suffixes` that `key` names (`naming` says how)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        name = key(path.name)
        if name is None:
            continue
        if name in found:
            raise FeatcacheError(
                f"{found[name]} and {path} are both named for {name}; keep one file per image in {folder}"
            )
        found[name] = path
    if not found:
        raise FeatcacheError(f"{what} folder {folder} holds no image file named {naming}; point it at the right folder")
    return found


def _unmatched(keys: list[str], have: Path, lack: Path, *, what: str, fix: str) -> None:
    """Raise when `keys` (ids with a file in `have` but none in `lack`) is not empty."""
    if keys:
        raise FeatcacheError(f"{len(keys)} {what} in {have} have no counterpart in {lack} ({shown(keys)}); {fix}")


def truth_mask(path: Path) -> torch.Tensor:
    """A truth mask file as bool ``[H, W]`` (lesion), by `evaluate_dirs`' rule: gray level above 128, a 0/1 mask
    read as 0/255."""
    return _load_gray(path)[0] > 128


def evaluation(keys: list[str], counts: torch.Tensor, convention: str, *, unpredicted: int = 0) -> Evaluation:
    """The `Evaluation` of images ``keys`` from their confusion counts ``[N, 4]`` (tp, fp, fn, tn)."""
    per_image = scores(counts, convention)
    rows = [
        {
            "id": key,
            **{name: per_image[name][row].item() for name in METRICS},
            **dict(zip(COUNTS, counts[row].tolist(), strict=True)),
        }
        for row, key in enumerate(keys)
    ]
    return Evaluation(mean=mean_scores(per_image), per_image=rows, convention=convention, unpredicted=unpredicted)


def _load_gray(path: Path) -> tuple[torch.Tensor, bool]:
    """8-bit gray levels uint8 [H, W] (colour images converted with PIL's 'L'), and whether it was a 0/1 mask.

    A mask whose values are only 0 and 1 (a common convention) is read as 0/255: under the > 128 rule it would
    otherwise be empty.
    """
    try:
        with Image.open(path) as img:
            gray = np.array(img.convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise bad_file(path, err) from err
    zero_one = bool(gray.max() == 1)
    return torch.from_numpy(gray * np.uint8(255) if zero_one else gray), zero_one


@dataclass
class EvaluateConfig:
    """What ``featcache evaluate`` takes: the predictions' and truths' folders, the metric convention
    (`CONVENTIONS`) and the threshold on a prediction's gray level / 256. The predicted images are scored (the
    truth folder may hold more; ``predicted_only`` says so explicitly); ``require_all``: every truth mask must
    have its prediction."""

    pred_dir: Path
    truth_dir: Path
    convention: str = "study"
    threshold: float = 0.5
    predicted_only: bool = False
    require_all: bool = False

    def validate(self) -> None:
        check_convention(self.convention)
        if self.predicted_only and self.require_all:
            raise OptionError("--predicted-only and --all contradict each other; pass one")


def evaluate_dirs(cfg: EvaluateConfig) -> Evaluation:
    """Score every predicted mask in ``cfg.pred_dir`` against its truth mask in ``cfg.truth_dir``.

    Predictions are matched to truths by name (`match_files`). Images are read as 8-bit gray (colour converted
    with PIL's 'L'). A truth pixel v is lesion when v > 128; a prediction pixel v is positive when
    v / 256 > threshold, i.e. v > 256 * threshold. The default 0.5 gives v > 128 for both, which is the official
    ISIC scorer's rule.
    """
    cfg.validate()
    preds, truths = match_files(Path(cfg.pred_dir), Path(cfg.truth_dir), predicted_only=not cfg.require_all)
    keys = sorted(preds)
    counts = torch.empty(len(keys), 4, dtype=torch.int64)  # [N, 4]
    zero_one: list[str] = []
    for row, key in enumerate(keys):
        truth, truth_01 = _load_gray(truths[key])
        pred, pred_01 = _load_gray(preds[key])
        zero_one += [p.name for p, flag in ((truths[key], truth_01), (preds[key], pred_01)) if flag]
        if pred.shape != truth.shape:
            raise FeatcacheError(
                f"prediction {preds[key]} is {pred.shape[1]}x{pred.shape[0]} but truth "
                f"{truths[key]} is {truth.shape[1]}x{truth.shape[0]} (width x height); "
                "write the prediction at the truth's size"
            )
        counts[row] = confusion((pred.float() / 256)[None], (truth > 128)[None], cfg.threshold)[0]
    if zero_one:
        err_console.print(
            f"note: {len(zero_one)} masks hold only the values 0 and 1 and were read as 0/1 "
            f"(e.g. {', '.join(zero_one[:3])})",
            markup=False,
            highlight=False,
        )
    return evaluation(keys, counts, cfg.convention, unpredicted=len(truths.keys() - preds.keys()))


def match_files(pred_dir: Path, truth_dir: Path, *, predicted_only: bool) -> tuple[dict[str, Path], dict[str, Path]]:
    """Predictions and truths by image id (all the truths found), every prediction with its truth (and, unless
    ``predicted_only``, every truth with its prediction).

    When the truth folder holds ISIC truths (``ISIC_<id>_segmentation.png``), a prediction is any image file whose
    name contains ``ISIC_<id>`` (``ISIC_0000001.png``, ``pred_ISIC_0000001_mask.png``, ...). Otherwise (a plain
    ``masks/`` folder) prediction and truth match by stem: ``<stem>_segmentation.png`` or ``<stem>.png`` on either
    side, as `featcache predict` writes and plain layouts hold.
    """
    for folder, what in ((truth_dir, "truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FeatcacheError(f"{what} folder {folder} does not exist; pass an existing folder")
    if any(_isic_truth_id(path.name) for path in truth_dir.iterdir()):
        truths = _files_by_key(truth_dir, _isic_truth_id, "truth", naming="ISIC_<7 digits>_segmentation.png")
        preds = _files_by_key(
            pred_dir,
            _isic_id,
            "prediction",
            naming=f"with an ISIC id (ISIC_<7 digits>), as the truths in {truth_dir} are",
        )
    else:
        # Truth masks are PNGs, as the plain layout reads them: a photo in the folder is no truth.
        names = "<stem>.png or <stem>_segmentation.png"
        truths = _files_by_key(
            truth_dir,
            _stem_key,
            "truth",
            naming=f"ISIC_<7 digits>_segmentation.png, {names}",
            suffixes=frozenset({".png"}),
        )
        preds = _files_by_key(pred_dir, _stem_key, "prediction", naming=names)
    if not preds.keys() & truths.keys():
        pred_name, truth_name = next(iter(preds.values())).name, next(iter(truths.values())).name
        raise FeatcacheError(
            f"no prediction in {pred_dir} has the name of a truth mask in {truth_dir} (e.g. {pred_name} vs "
            f"{truth_name}); name each prediction after its image: <stem>_segmentation.png (as featcache predict "
            "does) or one holding the ISIC id"
        )
    if not predicted_only:
        missing = sorted(truths.keys() - preds.keys())
        fix = "add the missing predictions, or drop --all to score only the predicted images"
        _unmatched(missing, truth_dir, pred_dir, what="truth masks", fix=fix)
    fix = "add their truth masks or remove these predictions"
    _unmatched(sorted(preds.keys() - truths.keys()), pred_dir, truth_dir, what="predictions", fix=fix)
    return preds, truths
