"""LoRA adapters (peft) on the trained blocks of Tk/Pk: which layers, what trains, merging, and without peft."""

from __future__ import annotations

import copy
import sys

import pytest
import torch

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models import build_encoder
from featcache.models.lora import add_lora, merge_lora, merged_encoder
from featcache.models.tail import PartlyFrozenEncoder, TailEncoder, has_lora, tail_tokens
from tests.models.test_tail import ENCODERS, GRID, check_same_step, images_for

RANK, ALPHA = 2, 4.0
#: The weights that adapters update in one block, under the block's name.
TORCHVISION_WEIGHTS = (
    "self_attention.in_proj_weight",
    "self_attention.out_proj.weight",
    "mlp.0.weight",
    "mlp.3.weight",
)
TIMM_WEIGHTS = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")


@pytest.fixture
def peft():
    return pytest.importorskip("peft")


@pytest.fixture(scope="module", params=["mini", "dino"])
def lora_encoder(request):
    arch, kwargs = ENCODERS[request.param]
    if arch.startswith("timm:"):
        pytest.importorskip("timm")
    return build_encoder(arch, "random", seed=2, model_kwargs=kwargs)


def block_names(encoder, k: int) -> list[str]:
    """The state-dict prefixes of the encoder's last k blocks."""
    if encoder.arch.startswith("timm:"):
        return [f"model.blocks.{i}" for i in range(encoder.depth - k, encoder.depth)]
    return [f"encoder.layers.encoder_layer_{i}" for i in range(encoder.depth - k, encoder.depth)]


def test_adapters_on_every_linear_layer_of_the_trained_blocks(peft, lora_encoder):
    encoder = lora_encoder
    x = images_for(encoder)
    with torch.no_grad():
        tokens = tail_tokens(encoder, x, 3)
    tail = TailEncoder(encoder, tail=3, train_blocks=2)
    with torch.no_grad():
        plain = tail(tokens, GRID)
    summary = add_lora(tail, rank=RANK, alpha=ALPHA)
    suffixes = TIMM_WEIGHTS if encoder.arch.startswith("timm:") else TORCHVISION_WEIGHTS
    assert summary.weights == tuple(f"{b}.{s}" for b in block_names(encoder, 2) for s in suffixes)
    c, mlp = encoder.layer_width, tail.trained[0].mlp
    hidden = mlp.fc1.out_features if encoder.arch.startswith("timm:") else mlp[0].out_features
    # per block: q/k/v (C -> 3C), out (C -> C), mlp (C -> M, M -> C): rank * (4C + 2C + 2(C + M))
    assert summary.trainable == 2 * RANK * (8 * c + 2 * hidden)
    trainable = {n for n, p in tail.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in tail.named_parameters() if n in trainable) == summary.trainable
    with torch.no_grad():
        torch.testing.assert_close(tail(tokens, GRID), plain, rtol=0, atol=1e-6)  # B starts at zero
    assert summary.to_dict()["weights"] == list(summary.weights)


def lora_step(tail, tokens):
    params = [p for p in tail.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.5)
    out = tail(tokens, GRID)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * target).mean().backward()  # not a function of the final norm's output alone, as out.square().mean() is
    optimiser.step()


def test_trained_adapters_merge_into_a_plain_encoder(peft, lora_encoder):
    encoder = lora_encoder
    x = images_for(encoder)
    with torch.no_grad():
        tokens = tail_tokens(encoder, x, 2)
    tail = TailEncoder(encoder, tail=2, train_blocks=1)
    torch.manual_seed(0)
    add_lora(tail, rank=RANK, alpha=ALPHA)
    with torch.no_grad():
        before = tail(tokens, GRID)
    lora_step(tail, tokens)
    tail.eval()
    with torch.no_grad():
        after = tail(tokens, GRID)
        assert not torch.allclose(after, before, atol=1e-4)
        merged = merged_encoder(encoder, tail)
        assert set(merged.state_dict()) == set(encoder.state_dict())
        torch.testing.assert_close(merged(x), after, rtol=0, atol=1e-5)
    assert has_lora(tail) and not has_lora(merged)
    # a resumed run: the same net and adapters, then the saved state
    again = TailEncoder(encoder, tail=2, train_blocks=1)
    add_lora(again, rank=RANK, alpha=ALPHA)
    again.load_state_dict(tail.state_dict())
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(tokens, GRID), after, rtol=0, atol=0)
    merge_lora(tail)
    assert not has_lora(tail) and "peft_config" not in tail.__dict__
    with torch.no_grad():
        torch.testing.assert_close(tail(tokens, GRID), after, rtol=0, atol=1e-5)
    assert set(tail.trained_state()) <= set(encoder.state_dict())


def test_lora_from_tokens_trains_as_lora_from_images(peft, lora_encoder):
    encoder = lora_encoder
    tk = TailEncoder(encoder, tail=2, train_blocks=1)
    pk = PartlyFrozenEncoder(encoder, train_blocks=1)
    summaries = []
    for net in (tk, pk):
        torch.manual_seed(3)
        summaries.append(add_lora(net, rank=RANK, alpha=ALPHA))
    assert summaries[0] == summaries[1]
    check_same_step(encoder, tk, pk, images_for(encoder, batch=3))


def test_mha_out_proj_alone_would_carry_an_adapter_that_never_runs(peft):
    """Why the whole torchvision ``self_attention`` is targeted: MultiheadAttention reads ``out_proj.weight``
    without calling ``out_proj``, so an adapter on ``out_proj`` alone changes nothing."""
    block = copy.deepcopy(build_encoder("vit_micro", "random").encoder.layers[-1])
    x = torch.randn(2, 5, block.ln_1.normalized_shape[0])
    with torch.no_grad():
        plain = block(x)
        peft.inject_adapter_in_model(
            peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["self_attention.out_proj"]), block
        )
        block.self_attention.out_proj.lora_B["default"].weight.fill_(1.0)
        torch.testing.assert_close(block(x), plain, rtol=0, atol=1e-5)


def test_bad_lora_options(peft):
    encoder = build_encoder("vit_micro", "random")
    tail = TailEncoder(encoder, tail=1, train_blocks=1)
    with pytest.raises(OptionError, match="--lora-rank 0"):
        add_lora(tail, rank=0, alpha=ALPHA)
    with pytest.raises(OptionError, match="--lora-alpha"):
        add_lora(tail, rank=RANK, alpha=0)


def test_without_peft_one_line_says_how_to_install(monkeypatch):
    tail = TailEncoder(build_encoder("vit_micro", "random"), tail=1, train_blocks=1)
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(FeatcacheError, match=r"pip install 'featcache\[peft\]'") as caught:
        add_lora(tail, rank=RANK, alpha=ALPHA)
    assert "\n" not in str(caught.value)
