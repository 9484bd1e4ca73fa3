"""featcache.store.encode: the flip views of a batch and the encoder over them, cast to the store's dtype."""

import torch

from featcache.store.encode import encode_views, view_batch
from featcache.store.schema import VIEWS

CPU = torch.device("cpu")


def test_views_are_stacked_sample_major_with_their_flips():
    images = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    out = view_batch(images, VIEWS["flips"])
    assert out.shape == (8, 3, 2, 2)
    expected = [images[0], images[0].flip(-1), images[0].flip(-2), images[0].flip(-2, -1), images[1]]
    for got, want in zip(out[:5], expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(view_batch(images, VIEWS["identity"]), images)


class Patches(torch.nn.Module):
    """A stand-in encoder: [N, 3, S, S] in 0..1 -> [N, 3, S/2, S/2], the mean of each 2x2 patch, plus one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        return torch.nn.functional.avg_pool2d(x, 2) + 1


def test_the_encoder_sees_every_view_in_0_to_1_and_its_features_come_back_per_sample_and_view():
    encoder = Patches()
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    feats = encode_views(encoder, images, VIEWS["flips"], device=CPU, dtype=torch.float16)
    assert feats.shape == (2, 4, 3, 2, 2) and feats.dtype == torch.float16 and feats.device == CPU
    assert encoder.seen.shape == (8, 3, 4, 4) and float(encoder.seen.max()) <= 1.0
    x = images.float() / 255
    torch.testing.assert_close(feats[1, 1], (torch.nn.functional.avg_pool2d(x[1:2].flip(-1), 2)[0] + 1).half())
    torch.testing.assert_close(feats[0, 3], (torch.nn.functional.avg_pool2d(x[0:1].flip(-2, -1), 2)[0] + 1).half())


def test_the_default_dtype_is_float32_and_no_gradient_is_kept():
    encoder = Patches()
    encoder.scale = torch.nn.Parameter(torch.ones(()))
    encoder.forward = lambda x: torch.nn.functional.avg_pool2d(x, 2) * encoder.scale
    feats = encode_views(encoder, torch.full((1, 3, 2, 2), 255, dtype=torch.uint8), ("identity",), device=CPU)
    assert feats.dtype == torch.float32 and not feats.requires_grad
    assert feats.tolist() == [[[[[1.0]], [[1.0]], [[1.0]]]]]
