"""featcache.results.overlays: mask outlines, truth red and prediction green, on a copy of the image."""

import numpy as np

from featcache.results.overlays import GREEN, RED, outline, overlay


def square(size: int, start: int, stop: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[start:stop, start:stop] = 255
    return mask


def test_outline_is_the_border():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    border = outline(mask, 1)
    assert border.sum() == 16 and not border[3, 3]


def test_an_outline_is_the_border_ring_of_the_given_thickness():
    mask = square(9, 2, 7)  # a 5x5 square
    ring = outline(mask, 1)
    assert ring.dtype == bool and ring.sum() == 16  # 25 pixels less the 3x3 inside
    assert not ring[4, 4] and ring[2, 2] and ring[6, 4] and not ring[1, 1]
    assert outline(mask, 2).sum() == 24  # only the centre pixel is left inside
    assert outline(mask, 3).sum() == 25 and not outline(np.zeros((4, 4)), 1).any()


def test_a_mask_touching_the_edge_is_outlined_there_too():
    full = np.ones((4, 5), bool)
    ring = outline(full, 1)
    assert ring[0].all() and ring[:, 0].all() and ring[-1].all() and ring[:, -1].all() and not ring[1:3, 1:4].any()


def test_truth_red_and_prediction_green_on_top_on_a_copy():
    image = np.full((12, 12, 3), 128, np.uint8)
    truth, pred = square(12, 2, 8), square(12, 4, 10)
    out = overlay(image, pred, truth)
    assert (image == 128).all() and out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[2, 2]) == RED and tuple(out[9, 9]) == GREEN and tuple(out[6, 6]) == (128, 128, 128)
    assert tuple(out[4, 7]) == GREEN  # on both outlines: the prediction is drawn last
    assert tuple(overlay(image, pred, None)[2, 2]) == (128, 128, 128)


def test_outlines_thicken_with_the_image_one_pixel_per_300():
    image = np.zeros((600, 900, 3), np.uint8)
    pred = np.zeros((600, 900), bool)
    pred[100:500, 100:800] = True
    out = overlay(image, pred, None)
    assert (out[300, 100:103] == GREEN).all() and (out[300, 103] == 0).all()  # 900 / 300 = 3 px
