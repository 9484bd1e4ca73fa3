"""Masks for new images from a trained run: the encoder rebuilt from provenance, then the decoder.

Writes, per image, ``OUT/<stem>_segmentation.png`` (0/255, the image's own resolution, so OUT
can be passed to ``featcache evaluate`` as it is) and ``OUT/overlays/<stem>_overlay.png``
(prediction outlined in green, truth in red when given, as in the study's figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featcache.data import IMAGE_EXTENSIONS, load_image, load_mask_full
from featcache.errors import FeatcacheError
from featcache.io import atomic_path, safe_torch_load
from featcache.models import build_decoder, encoder_from_provenance
from featcache.runtime import err_console, resolve_device
from featcache.train import DECODER_CHECKPOINT_FORMAT

GREEN, RED = (0, 255, 0), (255, 0, 0)


def find_checkpoint(run_dir: Path) -> Path:
    """``RUN_DIR/decoder.pt``, or for a sweep folder the seed run with the lowest validation loss."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FeatcacheError(f"run folder {run_dir} does not exist; pass a train-decoder output folder")
    if (run_dir / "decoder.pt").is_file():
        return run_dir / "decoder.pt"
    candidates = sorted(run_dir.glob("seed-*/decoder.pt"))
    if not candidates:
        raise FeatcacheError(f"{run_dir} holds no decoder.pt (nor seed-*/decoder.pt); pass a train-decoder output folder")
    best = min(candidates, key=lambda p: safe_torch_load(p)["results"]["best_val_loss"])
    err_console.print(f"{run_dir}: {best.parent.name} has the lowest validation loss of {len(candidates)} seeds; predicting with it")
    return best


def outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Bool ``[H, W]``: pixels of ``mask`` within ``thickness`` of its border."""
    inner = mask.astype(bool)
    eroded = inner.copy()
    for _ in range(thickness):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inner & ~eroded


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """RGB ``[H, W, 3]`` uint8 with the truth outlined red and the prediction green."""
    out = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 300))
    if truth is not None:
        out[outline(truth, thickness)] = RED
    out[outline(pred, thickness)] = GREEN
    return out


@dataclass
class Prediction:
    image: Path
    mask: Path
    overlay: Path
    lesion_fraction: float


def _expand(images: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in images:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and "_superpixels" not in p.name)
        elif path.is_file():
            files.append(path)
        else:
            raise FeatcacheError(f"{path} does not exist; pass image files or folders of images")
    if not files:
        raise FeatcacheError("no images to predict; pass image files or folders of images")
    return files


def _truth_for(truth_dir: Path, stem: str) -> Path:
    for name in (f"{stem}_segmentation.png", f"{stem}.png"):
        if (truth_dir / name).is_file():
            return truth_dir / name
    raise FeatcacheError(f"no truth mask for {stem} in {truth_dir} ({stem}_segmentation.png or {stem}.png)")


@torch.no_grad()
def predict(run_dir: Path, images: list[Path], out: Path, truth_dir: Path | None = None, device: str = "auto",
            threshold: float = 0.5, encoder_weights: str | Path | None = None) -> list[Prediction]:
    """Predict a mask per image at its original resolution (logits upsampled bilinearly).

    ``encoder_weights``: the encoder's weights file, if it moved since extraction.
    """
    dev = resolve_device(device)
    ckpt = safe_torch_load(find_checkpoint(run_dir))
    if not isinstance(ckpt, dict) or ckpt.get("format") != DECODER_CHECKPOINT_FORMAT:
        raise FeatcacheError(f"{run_dir} does not hold a featcache decoder checkpoint")
    store = ckpt["store"]
    prov = store["encoder"]
    encoder = encoder_from_provenance(prov["arch"], prov["source"], prov["weights_sha256"], encoder_weights)
    if ckpt.get("encoder_state_dict"):
        encoder.load_state_dict(ckpt["encoder_state_dict"])
    decoder = build_decoder(ckpt["decoder"], ckpt["in_channels"])
    decoder.load_state_dict(ckpt["state_dict"])
    encoder, decoder = encoder.to(dev).eval(), decoder.to(dev).eval()
    size = int(store["preprocessing"]["size"])
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in _expand(images):
        x = torch.from_numpy(load_image(path, size))[None].to(dev).float().div_(255)
        with Image.open(path) as img:
            original = np.asarray(img.convert("RGB"))
        logits = decoder(encoder(x)).float()
        logits = F.interpolate(logits, size=original.shape[:2], mode="bilinear", align_corners=False)
        pred = (torch.sigmoid(logits)[0, 0] > threshold).cpu().numpy()
        truth = load_mask_full(_truth_for(truth_dir, path.stem)).astype(bool) if truth_dir else None
        if truth is not None and truth.shape != pred.shape:
            raise FeatcacheError(f"the truth mask of {path.name} is {truth.shape[::-1]}, the image {pred.shape[::-1]}: fix the mask")
        mask_path, overlay_path = out / f"{path.stem}_segmentation.png", out / "overlays" / f"{path.stem}_overlay.png"
        with atomic_path(mask_path) as tmp:
            Image.fromarray(pred.astype(np.uint8) * 255).save(tmp, format="PNG")
        with atomic_path(overlay_path) as tmp:
            Image.fromarray(overlay(original, pred, truth)).save(tmp, format="PNG")
        results.append(Prediction(path, mask_path, overlay_path, float(pred.mean())))
    return results
