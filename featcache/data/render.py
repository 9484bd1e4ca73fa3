"""Procedural dermoscopy-like images and their lesion masks, one image at a time.

Each image shows textured skin under uneven illumination, one irregular pigmented lesion
(the only thing in the mask) and, in a random subset of images, distractors that real ISIC
images have and a segmenter must learn to ignore: dark hairs, ruler tick marks, air bubbles and
the black corners of a circular dermoscope field of view.

Smooth components (skin, lesion, illumination) are rendered at a reduced working resolution and
upsampled; fine detail (grain, hairs, ruler, bubble rims) is drawn at full resolution. Image
``i`` depends only on ``(seed, i)``, so adding images to a split never changes earlier ones.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# Height:width ratios of landscape ISIC 2017 images.
ASPECT_RATIOS: tuple[tuple[int, int], ...] = ((3, 4), (2, 3), (4, 5))
LONG_SIDE_RANGE = (320, 1100)
LARGE_LONG_SIDE_RANGE = (1024, 1100)
# Every LARGE_EVERY-th id is drawn from LARGE_LONG_SIDE_RANGE, so any run of that many
# consecutive ids holds at least one image above 1000 px.
LARGE_EVERY = 8
WORK_LONG_SIDE = 288  # long side (px) of the working grid for the smooth components

# Probability that an image shows each distractor.
P_HAIR, P_RULER, P_BUBBLES, P_DARK_CORNERS = 0.45, 0.3, 0.3, 0.35

# Lesion colours as per-channel fractions of the skin colour (RGB); all well below 1 so the
# lesion is always darker and browner than the skin around it.
LIGHT_BROWN = np.array([0.62, 0.48, 0.40], dtype=np.float32)
DARK_BROWN = np.array([0.30, 0.20, 0.16], dtype=np.float32)
BLUE_GREY = np.array([0.42, 0.42, 0.50], dtype=np.float32)


def sample_image_size(index: int, seed: int = 0) -> tuple[int, int]:
    """Default (height, width) in pixels of image ``index`` for ``seed``.

    Landscape, with an ISIC-like aspect ratio and a long side in LONG_SIDE_RANGE; every
    LARGE_EVERY-th index has a long side above 1000 px.
    """
    rng = _image_rng(seed, index, stream=0)
    a, b = ASPECT_RATIOS[rng.integers(len(ASPECT_RATIOS))]
    low, high = LARGE_LONG_SIDE_RANGE if index % LARGE_EVERY == 0 else LONG_SIDE_RANGE
    long_side = int(rng.integers(low, high + 1))
    return round(long_side * a / b), long_side


def render_sample(
    index: int, seed: int = 0, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Render image ``index`` for ``seed``.

    Args:
        index: global image id (ids run on across train, val, test).
        seed: dataset seed.
        image_size: (H, W) in pixels; None draws it with `sample_image_size`.

    Returns:
        image [H, W, 3] uint8 RGB and mask [H, W] uint8 (0 background, 255 lesion, never empty).
    """
    height, width = image_size if image_size is not None else sample_image_size(index, seed)
    rng = _image_rng(seed, index, stream=1)
    scale = min(1.0, WORK_LONG_SIDE / max(height, width))
    work_hw = (max(2, round(height * scale)), max(2, round(width * scale)))

    skin = _skin(rng, work_hw)
    level = _lesion_level(rng, work_hw)
    work_rgb = _paint_lesion(rng, skin, level)
    illumination = _illumination(rng, work_hw)

    image = _upsample(work_rgb.clip(0, 255).astype(np.uint8), (height, width))
    image = image.astype(np.float32)
    image += 3.0 * rng.standard_normal((height, width, 1), dtype=np.float32)
    if rng.random() < P_BUBBLES:
        _add_bubbles(rng, image)
    if rng.random() < P_HAIR:
        _add_hairs(rng, image)
    if rng.random() < P_RULER:
        _add_ruler(rng, image)
    if rng.random() < P_DARK_CORNERS:
        illumination *= _dark_corners(rng, work_hw)
    image *= _upsample(illumination, (height, width))[..., None]

    full_level = _upsample(level, (height, width))
    mask = full_level < 1.0
    if not mask.any():  # only possible at tiny sizes: keep the target non-empty
        mask[np.unravel_index(np.argmin(full_level), full_level.shape)] = True
    return image.clip(0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def _image_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Generator for one image: ``stream`` 0 draws its size, 1 its content.

    Same stream as ``SeedSequence(seed).spawn(n)[index].spawn(2)[stream]`` for any n > index,
    so image ``index`` does not depend on how many images are made.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream)))


def _upsample(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize [h, w] float32 or [h, w, 3] uint8 ``array`` to ``hw`` = (H, W), bilinear."""
    if array.shape[:2] == hw:
        return array
    return np.asarray(Image.fromarray(array).resize(hw[::-1], Image.Resampling.BILINEAR))


def _smooth_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int) -> np.ndarray:
    """[h, w] float32 noise, about unit variance, with ``cells`` features along the long side."""
    h, w = hw
    cells = min(cells, max(h, w) // 2)
    grid_hw = (max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w))))
    grid = rng.standard_normal(grid_hw, dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC))


def _fractal_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int, *, octaves: int) -> np.ndarray:
    """[h, w] float32 sum of ``octaves`` smooth noises, each twice as fine and half as strong."""
    total = np.zeros(hw, dtype=np.float32)
    for octave in range(octaves):
        total += 0.5**octave * _smooth_noise(rng, hw, cells * 2**octave)
    return total / np.sqrt(sum(0.25**octave for octave in range(octaves)))


def _coordinates(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates [h, 1] and [1, w] in units of the long side (0..1)."""
    h, w = hw
    long_side = max(h, w)
    return (
        ((np.arange(h, dtype=np.float32) + 0.5) / long_side)[:, None],
        ((np.arange(w, dtype=np.float32) + 0.5) / long_side)[None, :],
    )


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic in between (same shape as x)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _skin(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """[h, w, 3] float32 skin in 0..255: a pinkish tone with mottled texture and redness."""
    base = np.array([222.0, 172.0, 150.0], dtype=np.float32) * rng.uniform(0.85, 1.05, 3)
    mottle = _fractal_noise(rng, hw, cells=6, octaves=5)[..., None]
    redness = np.clip(_fractal_noise(rng, hw, cells=3, octaves=2), 0, None)[..., None]
    skin = base * (1.0 + 0.05 * mottle)
    skin *= 1.0 - rng.uniform(0.0, 0.12) * redness * np.array([0.0, 1.0, 0.8], np.float32)
    return skin


def _lesion_level(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """[h, w] float32 level field of the lesion: below 1 inside, 1 on the border.

    The border is r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)), k = 2..6, plus a small
    smooth wobble. R is set so the lesion covers a random 8%-38% of the image.
    """
    h, w = hw
    y, x = _coordinates(hw)
    harmonics = np.arange(2, 7, dtype=np.float32)
    amplitudes = rng.uniform(0.0, 1.0, harmonics.size).astype(np.float32) / harmonics
    amplitudes *= rng.uniform(0.1, 0.42) / amplitudes.sum()  # keeps r(theta) > 0
    phases = rng.uniform(0.0, 2.0 * np.pi, harmonics.size).astype(np.float32)

    area = rng.uniform(0.08, 0.38) * h * w / max(h, w) ** 2
    # Area of the harmonic polygon is pi R^2 (1 + sum a_k^2 / 2).
    radius = np.sqrt(area / (np.pi * (1.0 + 0.5 * np.sum(amplitudes**2))))
    cy = h / max(h, w) * (0.5 + rng.uniform(-0.08, 0.08))
    cx = w / max(h, w) * (0.5 + rng.uniform(-0.1, 0.1))

    theta = np.arctan2(y - cy, x - cx)[None]  # [1, h, w]
    waves = np.cos(harmonics[:, None, None] * theta + phases[:, None, None])  # [5, h, w]
    border = radius * (1.0 + np.tensordot(amplitudes, waves, axes=1))
    wobble = np.exp(0.06 * _fractal_noise(rng, hw, cells=10, octaves=2))
    return np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / border * wobble


def _paint_lesion(rng: np.random.Generator, skin: np.ndarray, level: np.ndarray) -> np.ndarray:
    """[h, w, 3] float32: ``skin`` with the lesion of ``level`` laid over it, soft border."""
    hw = level.shape
    darkness = np.clip(
        rng.uniform(0.15, 0.65)
        + 0.35 * _fractal_noise(rng, hw, cells=8, octaves=3)
        + rng.uniform(0.0, 0.5) * (1.0 - np.clip(level, 0, 1)),  # often darker at the centre
        0.0,
        1.0,
    )[..., None]
    tint = LIGHT_BROWN + darkness * (DARK_BROWN - LIGHT_BROWN)
    veil = rng.uniform(0.0, 0.6) * np.clip(_smooth_noise(rng, hw, cells=4), 0, 1)[..., None]
    tint = tint + veil * (BLUE_GREY - tint)
    softness = rng.uniform(0.03, 0.12)
    alpha = rng.uniform(0.85, 1.0) * (1.0 - _smoothstep(1.0 - softness, 1.0 + softness, level))
    return skin * (1.0 - alpha[..., None] * (1.0 - tint))


def _illumination(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """[h, w] float32 brightness factor: radial vignetting, 1 at the centre."""
    y, x = _coordinates(hw)
    cy, cx = hw[0] / max(hw) / 2, hw[1] / max(hw) / 2
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / (cy**2 + cx**2)
    return (1.0 - rng.uniform(0.05, 0.3) * r2).astype(np.float32)


def _dark_corners(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """[h, w] float32 factor: 1 inside the dermoscope's circular field of view, ~0.04 outside."""
    y, x = _coordinates(hw)
    cy = hw[0] / max(hw) / 2 * (1.0 + rng.uniform(-0.05, 0.05))
    cx = hw[1] / max(hw) / 2 * (1.0 + rng.uniform(-0.05, 0.05))
    half_diagonal = float(np.hypot(*hw)) / max(hw) / 2
    radius = rng.uniform(0.8, 0.97) * half_diagonal
    edge = 0.02 * half_diagonal
    distance = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    return (1.0 - 0.96 * _smoothstep(radius - edge, radius + edge, distance)).astype(np.float32)


# --- full-resolution distractors, drawn in place on an [H, W, 3] float32 image ------------


def _blend_drawing(image: np.ndarray, layer: Image.Image, radius: float, *, colour: np.ndarray | float) -> None:
    """Blend ``colour`` into ``image`` [H, W, 3] with weights from an 'L' drawing ``layer``.

    The layer (0..255 -> weight 0..1) is blurred by ``radius`` px to antialias the drawing.
    Drawings cover few pixels, so only the layer's bounding box and its non-zero pixels are
    processed.
    """
    box = layer.getbbox()
    if box is None:
        return
    pad = int(np.ceil(3 * radius))
    left, top = max(0, box[0] - pad), max(0, box[1] - pad)
    right, bottom = min(layer.width, box[2] + pad), min(layer.height, box[3] + pad)
    weights = np.asarray(layer.crop((left, top, right, bottom)).filter(ImageFilter.GaussianBlur(radius)))
    rows, cols = np.nonzero(weights)
    alpha = weights[rows, cols].astype(np.float32)[:, None] / 255.0
    region = image[top:bottom, left:right]
    region[rows, cols] += alpha * (colour - region[rows, cols])


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray | float) -> None:
    """image <- image (1 - alpha) + colour alpha, in place, for alpha [H, W] in 0..1."""
    image += alpha[..., None] * (colour - image)


def _add_hairs(rng: np.random.Generator, image: np.ndarray) -> None:
    """Dark, thin, gently curved hairs with a shared dominant direction."""
    height, width = image.shape[:2]
    long_side = max(height, width)
    layer = Image.new("L", (width, height))
    draw = ImageDraw.Draw(layer)
    direction = rng.uniform(0.0, np.pi)
    t = np.linspace(0.0, 1.0, 24)[:, None]
    for _ in range(rng.integers(2, 30)):
        start = rng.uniform(-0.1, 1.1, 2) * (width, height)
        angle = direction + rng.normal(0.0, 0.5)
        length = rng.uniform(0.15, 0.6) * long_side
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-np.sin(angle), np.cos(angle)])
        control = (start + end) / 2 + rng.uniform(-0.25, 0.25) * length * normal
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end  # quadratic Bezier
        width_px = max(1, round(rng.uniform(0.6, 2.0) * long_side / 600))
        draw.line([tuple(p) for p in curve], fill=int(rng.integers(150, 256)), width=width_px, joint="curve")
    colour = np.array([45.0, 32.0, 26.0], dtype=np.float32) * rng.uniform(0.6, 1.3)
    _blend_drawing(image, layer, 0.6, colour=colour)


def _add_ruler(rng: np.random.Generator, image: np.ndarray) -> None:
    """A translucent strip with black tick marks (every 5th and 10th longer) along one edge."""
    # The top rows of a rotated view are one edge of ``image``; writes go through to it.
    frame = np.rot90(image, int(rng.integers(4)))
    band = max(4, round(rng.uniform(0.05, 0.09) * min(image.shape[:2])))
    spacing = max(3.0, rng.uniform(0.012, 0.025) * max(image.shape[:2]))
    tick_width = max(1, round(spacing / 6))

    position = np.arange(frame.shape[1]) - rng.uniform(0, spacing)
    tick = np.floor(position / spacing).astype(int)
    on_tick = np.mod(position, spacing) < tick_width
    tick_length = band * np.where(tick % 10 == 0, 0.9, np.where(tick % 5 == 0, 0.65, 0.4))
    ticks = on_tick & (np.arange(band)[:, None] < tick_length)  # [band, frame width]

    strip = frame[:band]
    _blend(strip, np.full(ticks.shape, 0.35, dtype=np.float32), 235.0)
    _blend(strip, 0.85 * ticks.astype(np.float32), 15.0)


def _add_bubbles(rng: np.random.Generator, image: np.ndarray) -> None:
    """Air bubbles: faint light discs with a bright rim, a thin dark edge and a highlight."""
    height, width = image.shape[:2]
    for _ in range(rng.integers(1, 8)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.012, 0.07) * max(height, width)
        rim = max(1, round(r / 12))
        # Layer values are blend weights towards near-black (edge) or white (light), x255.
        edge, light = Image.new("L", (width, height)), Image.new("L", (width, height))
        ImageDraw.Draw(edge).ellipse([cx - r - rim, cy - r - rim, cx + r + rim, cy + r + rim], outline=50, width=rim)
        draw = ImageDraw.Draw(light)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=30, outline=160, width=rim)
        draw.ellipse([cx - 0.55 * r, cy - 0.55 * r, cx - 0.3 * r, cy - 0.3 * r], fill=160)
        _blend_drawing(image, edge, 0.7, colour=20.0)
        _blend_drawing(image, light, 0.7, colour=255.0)


# --- contact sheet ---------------------------------------------------------------------------
