"""Masks for new images from a trained run: the encoder rebuilt from provenance, then the decoder.

Writes, per image, ``OUT/<stem>_segmentation.png``: an 8-bit 0/255 PNG at the image's own
resolution, as ISIC's masks are, so OUT can be passed to ``featcache evaluate`` as it is. With
``overlays``, also the prediction outlined in green, and the truth in red when given, as in the
study's figures:

- ``preview`` (default): ``OUT/overlays/<stem>_overlay.jpg``, at most ``PREVIEW_LONG_SIDE`` pixels
  on the long side (the image and masks shrunk, nearest for the masks; never enlarged);
- ``full``: ``OUT/overlays/<stem>_overlay.png`` at the image's own resolution (lossless, several
  MB for a 3024x2016 photo and slow to compress);
- ``none``: no overlays folder.

With truth masks, each prediction is also scored against its truth (study convention, the rule of
``featcache evaluate``): ``OUT/scores.csv`` (per image) and ``OUT/scores.json`` (per image and means).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featcache.core.context import Context
from featcache.core.errors import FeatcacheError, OptionError
from featcache.core.io import atomic_path, ensure_writable_dir, safe_torch_load
from featcache.core.runtime import err_console
from featcache.data.layouts import IMAGE_EXTENSIONS, header_hw
from featcache.data.loading import load_image, load_mask_full
from featcache.models.decoders import build_decoder
from featcache.models.spec import AnyEncoder, EncoderSpec
from featcache.results.evaluate import evaluation, truth_mask
from featcache.results.metrics import METRICS, confusion
from featcache.results.overlays import overlay
from featcache.results.records import DecoderCheckpoint
from featcache.store.encoder_check import check_run_encoder

OVERLAY_MODES = ("preview", "full", "none")
PREVIEW_LONG_SIDE = 1024  # pixels


def find_checkpoint(run_dir: Path) -> Path:
    """``RUN_DIR/decoder.pt``, or for a sweep folder the seed run with the lowest validation loss."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FeatcacheError(f"run folder {run_dir} does not exist; pass a train-decoder output folder")
    if (run_dir / "decoder.pt").is_file():
        return run_dir / "decoder.pt"
    # A sweep's seeds, or a grid's (lr, weight decay) combinations and their seeds.
    candidates = sorted(run_dir.glob("seed-*/decoder.pt")) or sorted(run_dir.glob("*/seed-*/decoder.pt"))
    if not candidates:
        raise FeatcacheError(
            f"{run_dir} holds no decoder.pt (nor seed-*/decoder.pt); pass a train-decoder output folder"
        )
    best = min(candidates, key=lambda p: DecoderCheckpoint.from_dict(safe_torch_load(p), p).results.best_val_loss)
    run = best.parent.relative_to(run_dir).as_posix()
    err_console.print(f"{run_dir}: {run} has the lowest validation loss of {len(candidates)} runs; predicting with it")
    return best


#: predict's scores against the truth masks, in its output folder.
SCORES_CSV, SCORES_JSON = "scores.csv", "scores.json"


@dataclass
class Prediction:
    """One image's prediction: the image, its mask file, its overlay (if drawn), the fraction of its pixels
    predicted lesion, and with a truth mask the confusion counts ``[4]`` (tp, fp, fn, tn) and per-image scores."""

    image: Path
    mask: Path
    overlay: Path | None
    lesion_fraction: float
    counts: torch.Tensor | None = None
    scores: dict[str, float] | None = None


def _expand(images: list[Path]) -> list[Path]:
    """The image files among ``images`` (files, and folders read one level deep), each file once.

    Two inputs whose stems match (case aside, for disks that ignore it) would write the same
    ``<stem>_segmentation.png``: refused before anything is computed or written.
    """
    files: list[Path] = []
    for path in images:
        if path.is_dir():
            files += sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and "_superpixels" not in p.name
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FeatcacheError(f"{path} does not exist; pass image files or folders of images")
    if not files:
        raise FeatcacheError("no images to predict; pass image files or folders of images")
    unique: dict[Path, Path] = {}
    for path in files:  # a file named twice (or also through its folder) is predicted once
        unique.setdefault(path.resolve(), path)
    files = list(unique.values())
    by_stem: dict[str, Path] = {}
    for path in files:
        other = by_stem.setdefault(path.stem.casefold(), path)
        if other is not path:
            where = "" if other.stem == path.stem else " on disks that ignore case"
            raise FeatcacheError(
                f"{other} and {path} would both be written as {path.stem}_segmentation.png{where}; "
                "pass them in separate runs with different --out"
            )
    return files


def _truths(files: list[Path], truth_dir: Path | None) -> list[Path | None]:
    """Each image's truth mask in ``truth_dir`` (None without it), checked from the headers before any work."""
    if truth_dir is None:
        return [None] * len(files)
    truths: list[Path | None] = []
    for path in files:
        names = (f"{path.stem}_segmentation.png", f"{path.stem}.png")
        found = [truth_dir / name for name in names if (truth_dir / name).is_file()]
        if not found:
            raise FeatcacheError(f"no truth mask for {path.stem} in {truth_dir} ({' or '.join(names)})")
        truth_hw, image_hw = header_hw(found[0]), header_hw(path)
        if truth_hw != image_hw:
            raise FeatcacheError(
                f"the truth mask of {path.name} is {truth_hw[::-1]}, the image {image_hw[::-1]}: fix the mask"
            )
        truths.append(found[0])
    return truths


def preview_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) scaled so that the long side is at most ``PREVIEW_LONG_SIDE``, aspect kept."""
    scale = min(1.0, PREVIEW_LONG_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _overlay_background(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """The image as RGB uint8 ``[H, W, 3]``, shrunk to ``size`` (width, height) unless None.

    A JPEG is decoded at the smallest DCT scale that still covers ``size``, which is most of the
    saving of a preview over a full-resolution overlay.
    """
    with Image.open(path) as img:
        if size is None:
            return np.asarray(img.convert("RGB"))
        if img.format == "JPEG":
            img.draft("RGB", size)
        rgb = img.convert("RGB")
    return np.asarray(rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BILINEAR))


def _shrink(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bool ``[H, W]`` mask resized (nearest) to ``size`` (width, height)."""
    return np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))


def _write_overlay(out: Path, path: Path, pred: np.ndarray, *, truth_path: Path | None, overlays: str) -> Path:
    """Draw and write the overlay of one image (``pred``: bool ``[H, W]`` at the image's resolution)."""
    height, width = pred.shape
    size = preview_size(width, height) if overlays == "preview" else None
    truth = load_mask_full(truth_path).astype(bool) if truth_path else None
    if size is not None and size != (width, height):
        pred = _shrink(pred, size)
        truth = _shrink(truth, size) if truth is not None else None
    drawn = Image.fromarray(overlay(_overlay_background(path, size), pred, truth))
    if overlays == "preview":
        overlay_path = out / "overlays" / f"{path.stem}_overlay.jpg"
        with atomic_path(overlay_path) as tmp:
            drawn.save(tmp, format="JPEG", quality=90, subsampling=0)  # 4:4:4 keeps thin coloured outlines sharp
    else:
        overlay_path = out / "overlays" / f"{path.stem}_overlay.png"
        with atomic_path(overlay_path) as tmp:
            drawn.save(tmp, format="PNG", compress_level=1)  # 5x faster than the default level, ~10 % larger
    return overlay_path


@dataclass
class PredictConfig:
    """What ``featcache predict`` takes: a trained run (a train-decoder output folder), image files or folders,
    the output folder, truth masks to outline (optional), the encoder's weights file if it moved since
    extraction (checked by hash), the overlays to draw (`OVERLAY_MODES`) and the probability threshold."""

    run_dir: Path
    images: list[Path]
    out: Path
    truth: Path | None = None
    encoder: str | None = None
    overlays: str = "preview"
    threshold: float = 0.5

    def validate(self) -> None:
        if self.overlays not in OVERLAY_MODES:
            raise OptionError(f"--overlays {self.overlays} is not one of {' | '.join(OVERLAY_MODES)}")


@dataclass
class TrainedRun:
    """A run ready to predict: its checkpoint, and its encoder and decoder on the device in eval mode."""

    checkpoint: DecoderCheckpoint
    encoder: AnyEncoder
    decoder: torch.nn.Module


def load_run(run_dir: Path, *, encoder_weights: str | Path | None, device: torch.device) -> TrainedRun:
    """The run's checkpoint (`find_checkpoint`), its encoder rebuilt from the store's record (proven by its hash,
    and by re-encoding a stored sample when the store is still there; a Tk run's trained blocks, LoRA adapters
    merged, loaded over it then) and its decoder."""
    path = find_checkpoint(run_dir)
    ckpt = DecoderCheckpoint.from_dict(safe_torch_load(path), path)
    encoder = EncoderSpec.recorded(ckpt.store.encoder, weights_file=encoder_weights, layers=ckpt.layers).build()
    encoder = encoder.to(device).eval()
    partial = bool(ckpt.results.train_blocks)  # the last blocks and final norm only: the rest is the store's
    if partial or not ckpt.encoder_state_dict:  # the store's own encoder: re-encode a stored sample to prove it
        check_run_encoder(ckpt.store.path, encoder, device)
    if ckpt.encoder_state_dict:
        unexpected = encoder.load_state_dict(ckpt.encoder_state_dict, strict=not partial).unexpected_keys
        if unexpected:
            raise FeatcacheError(f"{path}: its encoder weights do not fit {encoder.arch} ({unexpected[0]}); train anew")
    decoder = build_decoder(ckpt.decoder, ckpt.in_channels, patch_size=ckpt.patch_size)
    decoder.load_state_dict(ckpt.state_dict)
    return TrainedRun(ckpt, encoder, decoder.to(device).eval())


@torch.no_grad()
def predict(cfg: PredictConfig, *, ctx: Context | None = None) -> list[Prediction]:
    """Predict a mask per image at its original resolution (logits upsampled bilinearly); a pixel is lesion when
    sigmoid(logit) > ``cfg.threshold``. Overlays as the module docstring says."""
    cfg.validate()
    files = _expand(cfg.images)
    truths = _truths(files, cfg.truth)
    ctx = ctx or Context.resolve()
    ensure_writable_dir(cfg.out)
    run = load_run(cfg.run_dir, encoder_weights=cfg.encoder, device=ctx.device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    predictions = [
        _predict_one(run, path, truth_path=truth, cfg=cfg, device=ctx.device)
        for path, truth in zip(files, truths, strict=True)
    ]
    if cfg.truth is not None:
        _write_scores(predictions, cfg.out)
    return predictions


def _write_scores(predictions: list[Prediction], out: Path) -> None:
    """Each prediction's scores against its truth, into ``OUT/scores.csv`` and ``OUT/scores.json`` (with means)."""
    scored = evaluation([p.image.stem for p in predictions], torch.stack([p.counts for p in predictions]), "study")
    scored.to_csv(out / SCORES_CSV)
    scored.to_json(out / SCORES_JSON)
    for p, row in zip(predictions, scored.per_image, strict=True):
        p.scores = {name: row[name] for name in METRICS}


def _predict_one(
    run: TrainedRun, path: Path, *, truth_path: Path | None, cfg: PredictConfig, device: torch.device
) -> Prediction:
    """One image's mask (and overlay) written into ``cfg.out``."""
    x = torch.from_numpy(load_image(path, run.checkpoint.store.preprocessing.size))[None].to(device).float().div_(255)
    height, width = header_hw(path)
    logits = run.decoder(run.encoder(x)).float()
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    # In place: a new full-resolution tensor would cost more than the sigmoid itself.
    pred = (torch.sigmoid_(logits)[0, 0] > cfg.threshold).cpu().numpy()  # bool [H, W]
    mask_path = cfg.out / f"{path.stem}_segmentation.png"
    with atomic_path(mask_path) as tmp:
        # 8-bit 0/255, as ISIC's masks; the lowest compression level writes 3x faster for a few % more bytes.
        Image.fromarray(pred.view(np.uint8) * np.uint8(255)).save(tmp, format="PNG", compress_level=1)
    overlay_path = None
    if cfg.overlays != "none":
        overlay_path = _write_overlay(cfg.out, path, pred, truth_path=truth_path, overlays=cfg.overlays)
    counts = None
    if truth_path is not None:
        counts = confusion(torch.from_numpy(pred)[None].float(), truth_mask(truth_path)[None])[0]
    return Prediction(path, mask_path, overlay_path, np.count_nonzero(pred) / pred.size, counts)
