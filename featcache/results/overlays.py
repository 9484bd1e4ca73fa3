"""Outlines of masks drawn on images: truth red, prediction green, as in the study's figures (used by
`featcache predict` and by the report's case figures)."""

from __future__ import annotations

import numpy as np

GREEN, RED = (0, 255, 0), (255, 0, 0)


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
