"""The encoder's last blocks from cached tokens (Tk) and from images (Pk): exactly the encoder, trained alike."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models import build_decoder, build_encoder
from featcache.models.lora import merged_encoder
from featcache.models.tail import (
    PartlyFrozenEncoder,
    TailEncoder,
    features_and_tail_tokens,
    num_prefix_tokens,
    tail_tokens,
)

TIMM_TINY = {"depth": 3, "embed_dim": 32, "num_heads": 2}
#: name -> (arch, model_kwargs); the DINOv2 has 4 registers (5 prefix tokens) and patch 14, its LayerScale starting
#: at 0.5 rather than 1e-5 so that its blocks' weights visibly matter.
ENCODERS = {
    "micro": ("vit_micro", None),
    "mini": ("vit_mini", None),
    "timm": ("timm:vit_tiny_patch16_224", TIMM_TINY),
    "dino": ("timm:vit_small_patch14_reg4_dinov2.lvd142m", {**TIMM_TINY, "img_size": 56, "init_values": 0.5}),
}
GRID = (2, 3)


@pytest.fixture(scope="module", params=list(ENCODERS))
def encoder(request):
    arch, kwargs = ENCODERS[request.param]
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    return build_encoder(arch, "random", seed=1, model_kwargs=kwargs)


def images_for(encoder, batch: int = 2, seed: int = 0) -> torch.Tensor:
    p = encoder.patch_size
    return torch.rand(batch, 3, GRID[0] * p, GRID[1] * p, generator=torch.Generator().manual_seed(seed))


def tails(depth: int) -> list[tuple[int, int]]:
    """Every (K, k) with 1 <= k <= K <= depth."""
    return [(big, k) for big, k in itertools.product(range(1, depth + 1), repeat=2) if k <= big]


def test_tail_of_cached_tokens_is_the_encoder(encoder):
    x = images_for(encoder)
    with torch.no_grad():
        reference = encoder(x)
        for big, k in tails(encoder.depth):
            tokens = tail_tokens(encoder, x, big)
            assert tokens.shape == (2, num_prefix_tokens(encoder) + GRID[0] * GRID[1], encoder.layer_width)
            out = TailEncoder(encoder, tail=big, train_blocks=k)(tokens, GRID)
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-5, msg=f"K={big} k={k}")
        for k in range(1, encoder.depth + 1):
            torch.testing.assert_close(PartlyFrozenEncoder(encoder, train_blocks=k)(x), reference, rtol=0, atol=1e-5)


def test_prefix_tokens_counted():
    assert num_prefix_tokens(build_encoder("vit_micro", "random")) == 1
    pytest.importorskip("timm")
    arch, kwargs = ENCODERS["dino"]
    assert num_prefix_tokens(build_encoder(arch, "random", model_kwargs=kwargs)) == 5


def test_one_pass_gives_the_features_and_the_tokens(encoder):
    deep = copy.deepcopy(encoder)
    deep.layers = (1, encoder.depth)  # several blocks read, as a multi-layer store does
    x = images_for(encoder)
    with torch.no_grad():
        for enc in (encoder, deep):
            for big in range(1, encoder.depth + 1):
                features, tokens = features_and_tail_tokens(enc, x, big)
                assert torch.equal(features, enc(x))  # bit for bit: a store with tokens has the same features
                torch.testing.assert_close(tokens, tail_tokens(enc, x, big), rtol=0, atol=0)


def test_tokens_of_a_deeper_tail_lead_to_the_shallower(encoder):
    x = images_for(encoder)
    for big, k in tails(encoder.depth):
        tail = TailEncoder(encoder, tail=big, train_blocks=k)
        with torch.no_grad():
            deeper = tail_tokens(encoder, x, big)
            expected = tail_tokens(encoder, x, k)
        advanced = tail.advance(deeper.requires_grad_())
        assert advanced.grad_fn is None  # the frozen blocks build no graph
        torch.testing.assert_close(advanced, expected, rtol=0, atol=1e-5)


def test_grid_from_the_token_count():
    encoder = build_encoder("vit_micro", "random")
    tail = TailEncoder(encoder, tail=1, train_blocks=1)
    square = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(tail(tail_tokens(encoder, square, 1)), encoder(square), rtol=0, atol=1e-5)
        tokens = tail_tokens(encoder, images_for(encoder), 1)
        with pytest.raises(ValueError, match="square"):
            tail(tokens)
        with pytest.raises(ValueError, match="does not hold"):
            tail(tokens, (3, 3))
        half = tail(tokens.half(), GRID)  # a float16 store's tokens
        assert half.dtype == torch.float32
        torch.testing.assert_close(half, tail(tokens, GRID), rtol=0, atol=2e-2)


def sgd_step(net, decoder, inputs, masks, grid=None):
    """One SGD step (momentum, weight decay) of net + decoder; returns the loss."""
    params = [p for p in [*net.parameters(), *decoder.parameters()] if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    features = net(inputs) if grid is None else net(inputs, grid)
    loss = F.binary_cross_entropy_with_logits(decoder(features), masks)
    loss.backward()
    optimiser.step()
    return loss.detach()


def trained_by_key(net) -> dict[str, torch.nn.Parameter]:
    """The net's trainable parameters under the encoder's names."""
    return {net.encoder_key(n): p for n, p in net.named_parameters() if p.requires_grad}


def check_same_step(encoder, tk, pk, x):
    """A step of Tk from cached tokens and of Pk from the images, same decoder and batch: same loss, gradients,
    weights; nothing frozen gets a gradient or changes."""
    torch.manual_seed(0)
    masks = (torch.rand(x.shape[0], 1, *x.shape[-2:]) > 0.5).float()
    decoder = build_decoder("sd", encoder.layer_width, patch_size=encoder.patch_size)
    decoders = [decoder, copy.deepcopy(decoder)]
    frozen_before = {n: p.detach().clone() for n, p in pk.named_parameters() if not p.requires_grad}
    before = {k: p.detach().clone() for k, p in trained_by_key(tk).items()}
    with torch.no_grad():
        tokens = tail_tokens(encoder, x, tk.tail)
    loss_t = sgd_step(tk, decoders[0], tokens, masks, GRID)
    loss_p = sgd_step(pk, decoders[1], x, masks)
    torch.testing.assert_close(loss_t, loss_p, rtol=0, atol=1e-6)
    t_params, p_params = trained_by_key(tk), trained_by_key(pk)
    assert set(t_params) == set(p_params) and len(t_params) > 0
    for key in t_params:
        torch.testing.assert_close(t_params[key].grad, p_params[key].grad, rtol=1e-4, atol=1e-6, msg=key)
        torch.testing.assert_close(t_params[key], p_params[key], rtol=0, atol=1e-6, msg=key)
    assert any(not torch.equal(before[k], t_params[k]) for k in before)
    for one, other in zip(decoders[0].parameters(), decoders[1].parameters(), strict=True):
        torch.testing.assert_close(one, other, rtol=0, atol=1e-6)
    for net in (tk, pk):
        assert all(p.grad is None for p in net.parameters() if not p.requires_grad)
    for name, p in pk.named_parameters():
        if name in frozen_before:
            assert torch.equal(p, frozen_before[name]), name


@pytest.mark.parametrize("big,k", [(1, 1), (2, 1), (2, 2)])
def test_a_step_from_tokens_is_a_step_from_images(encoder, big, k):
    tk = TailEncoder(encoder, tail=big, train_blocks=k)
    pk = PartlyFrozenEncoder(encoder, train_blocks=k)
    frozen = [copy.deepcopy(b.state_dict()) for b in tk.frozen]
    check_same_step(encoder, tk, pk, images_for(encoder, batch=3))
    for block, state in zip(tk.frozen, frozen, strict=True):
        for name, value in block.state_dict().items():
            assert torch.equal(value, state[name])


def test_frozen_parts_stay_in_eval_mode(encoder):
    tk = TailEncoder(encoder, tail=min(2, encoder.depth), train_blocks=1)
    pk = PartlyFrozenEncoder(encoder, train_blocks=1)
    for mode in (True, False, True):
        tk.train(mode)
        pk.train(mode)
        assert all(not m.training for m in tk.frozen.modules())
        assert all(m.training == mode for m in [*tk.trained.modules(), *tk.norm.modules()])
        top = {n for n, _ in pk.named_modules() if pk.encoder_key(n + ".") is not None}
        for name, module in pk.named_modules():
            if name:
                assert module.training == (mode and name in top), name


def test_merged_encoder_is_a_plain_encoder(encoder):
    tk = TailEncoder(encoder, tail=2, train_blocks=1)
    x = images_for(encoder)
    check_same_step(encoder, tk, PartlyFrozenEncoder(encoder, train_blocks=1), x)
    merged = merged_encoder(encoder, tk)
    assert set(merged.state_dict()) == set(encoder.state_dict())
    assert not hasattr(merged, "source")
    fresh = copy.deepcopy(encoder)
    fresh.load_state_dict(merged.state_dict(), strict=True)
    tk.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), tk(tail_tokens(encoder, x, 2), GRID), rtol=0, atol=1e-5)
        assert not torch.allclose(fresh(x), encoder(x), atol=1e-4)


def test_bad_tails_are_refused():
    encoder = build_encoder("vit_micro", "random")
    for bad in (0, 3):
        with pytest.raises(OptionError, match="--tail-tokens"):
            tail_tokens(encoder, images_for(encoder), bad)
    with pytest.raises(OptionError, match="mode C"):
        TailEncoder(encoder, tail=2, train_blocks=0)
    with pytest.raises(FeatcacheError, match="--tail-tokens 2 or more") as caught:
        TailEncoder(encoder, tail=1, train_blocks=2)
    assert not isinstance(caught.value, OptionError)
    with pytest.raises(OptionError, match="has 2 blocks"):
        PartlyFrozenEncoder(encoder, train_blocks=3)


def test_a_timm_model_with_its_own_block_loop_is_refused():
    pytest.importorskip("timm")
    eva = build_encoder("timm:eva02_tiny_patch14_224", "random", model_kwargs={**TIMM_TINY, "img_size": 56})
    with pytest.raises(FeatcacheError, match="runs its blocks its own way"):
        TailEncoder(eva, tail=1, train_blocks=1)
    with pytest.raises(FeatcacheError, match="runs its blocks its own way"):
        PartlyFrozenEncoder(eva, train_blocks=1)
