"""featcache.data.render: one procedural image and its mask, drawn from (seed, index) alone."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from featcache.data.render import ASPECT_RATIOS, render_sample, sample_image_size


def test_an_image_is_rgb_uint8_with_a_binary_non_empty_mask_of_its_size():
    image, mask = render_sample(3, seed=0, image_size=(40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 56) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert 0.02 < (mask == 255).mean() < 0.6
    assert image.std() > 5  # textured, not a flat fill


def test_an_image_depends_on_its_seed_and_index_alone():
    image, mask = render_sample(2, seed=7, image_size=(32, 40))
    again = render_sample(2, seed=7, image_size=(32, 40))
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])
    for other in (render_sample(3, seed=7, image_size=(32, 40)), render_sample(2, seed=8, image_size=(32, 40))):
        assert not np.array_equal(image, other[0])


@pytest.mark.parametrize("size", [(8, 8), (8, 11), (12, 8)])
def test_the_mask_is_never_empty_even_at_the_smallest_size_synth_takes(size):
    for index in range(8):
        image, mask = render_sample(index, seed=0, image_size=size)
        assert image.shape == (*size, 3) and (mask == 255).any()


def test_without_a_size_an_image_takes_its_drawn_size_with_an_isic_aspect_ratio():
    height, width = sample_image_size(5, seed=1)
    assert sample_image_size(5, seed=1) == (height, width)
    assert any(height == round(width * a / b) for a, b in ASPECT_RATIOS)
    image, mask = render_sample(5, seed=1)
    assert image.shape == (height, width, 3) and mask.shape == (height, width)


def test_default_sizes_vary_non_square_some_large() -> None:
    sizes = [sample_image_size(i, seed=0) for i in range(16)]
    assert len(set(sizes)) > 8
    assert all(w > h for h, w in sizes)
    assert all(320 <= w <= 1100 for _, w in sizes)
    assert sum(w > 1000 for _, w in sizes) >= 2
    for start in range(9):
        assert any(w > 1000 for _, w in sizes[start : start + 8])


def test_lesion_darker_than_surrounding_skin() -> None:
    for index in range(6):
        image, mask = render_sample(index, seed=0, image_size=(96, 128))
        gray = image.astype(np.float32).mean(axis=-1)
        lesion = mask == 255
        dilated = np.asarray(Image.fromarray(mask).filter(ImageFilter.MaxFilter(15))) == 255
        ring = dilated & ~lesion
        assert gray[lesion].mean() < gray[ring].mean() - 20
        blue_over_red = image[..., 2].astype(np.float32) / (image[..., 0] + 1.0)
        assert blue_over_red[lesion].mean() < blue_over_red[ring].mean()  # browner
