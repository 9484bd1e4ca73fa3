"""The encoder's last blocks trained from cached tokens (mode Tk) or from images (mode Pk).

An encoder of depth D runs: embedding (patches, prefix tokens, positional embedding and whatever the model
applies before its blocks) -> blocks 1..D -> final norm -> prefix tokens dropped -> patch grid. The tokens
entering block D-K+1 (`tail_tokens`, ``[B, T, C]``, T = prefix tokens + h*w) are what a store keeps for a tail
of K blocks. From them, `TailEncoder` (K, k) runs blocks D-K+1..D-k frozen and blocks D-k+1..D plus the final
norm trainable, and gives exactly the encoder's own patch features ``[B, C, h, w]``. `PartlyFrozenEncoder` (k)
is the same trainable top computed from the images at every step (blocks 1..D-k frozen): what Tk saves.

k = 0 (nothing trained) is mode C, whose features are the stored ones: neither class takes it; the caller
reads the store's ``features``. The output is always the last block through the final norm, whatever blocks
the encoder's ``layers`` name.

Frozen parts run without gradients and stay in eval mode whatever ``train()`` says (the cached tokens were
computed in eval mode); the trainable top follows ``train()``/``eval()``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models.spec import AnyEncoder
from featcache.models.vit import Encoder


def _blocks(encoder: AnyEncoder) -> nn.Sequential:
    return encoder.encoder.layers if isinstance(encoder, Encoder) else encoder.model.blocks


def _norm(encoder: AnyEncoder) -> nn.Module:
    return encoder.encoder.ln if isinstance(encoder, Encoder) else encoder.model.norm


def _module_names(encoder: AnyEncoder) -> dict[int, str]:
    """``id(module) -> its name in the encoder's state dict`` (e.g. ``encoder.layers.encoder_layer_3``)."""
    return {id(module): name for name, module in encoder.named_modules()}


def num_prefix_tokens(encoder: AnyEncoder) -> int:
    """Tokens before the patch tokens in the sequence (class token, registers, distillation token)."""
    return 1 if isinstance(encoder, Encoder) else int(getattr(encoder.model, "num_prefix_tokens", 0))


def _check_kind(encoder: AnyEncoder) -> None:
    """Refuse a timm model whose blocks do not run as timm's ``VisionTransformer.forward_intermediates`` runs them
    (the path mirrored by `_embed`): EVA's rotary embeddings, SAM's windows, ..."""
    if isinstance(encoder, Encoder):
        return
    from timm.models.vision_transformer import VisionTransformer

    model = encoder.model
    if not isinstance(model, VisionTransformer) or (
        type(model).forward_intermediates is not VisionTransformer.forward_intermediates
    ):
        raise FeatcacheError(
            f"{encoder.arch} ({type(model).__name__}) runs its blocks its own way; tail tokens (Tk/Pk) take timm "
            "VisionTransformer models (ViT, DeiT, DINOv2, CLIP, SigLIP, MAE) or the torchvision ViTs"
        )


def check_tail(encoder: AnyEncoder, tail: int) -> None:
    """Refuse a tail of ``tail`` blocks that ``encoder`` cannot give: outside 1..depth, or a model that runs its blocks
    its own way."""
    _check_kind(encoder)
    if not 1 <= tail <= encoder.depth:
        raise OptionError(f"--tail-tokens {tail}: {encoder.arch} has {encoder.depth} blocks; give 1 to {encoder.depth}")


def _embed(encoder: AnyEncoder, images: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] -> the tokens ``[B, T, C]`` entering block 1, as the encoder's forward
    computes them (`Encoder.forward_tokens`; timm's ``forward_intermediates``)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    p = encoder.patch_size
    if images.shape[-2] % p or images.shape[-1] % p:
        raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
    x = (images - encoder.mean) / encoder.std
    if isinstance(encoder, Encoder):
        x = encoder.conv_proj(x)
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([encoder.class_token.expand(b, -1, -1), x], dim=1)
        x = x + encoder._pos_embedding(h, w)
        return encoder.encoder.dropout(x)
    model = encoder.model
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def tail_tokens(encoder: AnyEncoder, images: torch.Tensor, tail: int) -> torch.Tensor:
    """The full token sequence ``[B, T, C]`` entering block D-K+1 (K = ``tail``, 1 <= K <= D) for images
    ``[B, 3, H, W]`` in [0, 1]: T = prefix tokens (`num_prefix_tokens`) + (H/p)*(W/p), before any final norm.
    Runs under the caller's grad mode."""
    check_tail(encoder, tail)
    x = _embed(encoder, images)
    for block in _blocks(encoder)[: encoder.depth - tail]:
        x = block(x)
    return x


def _to_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Normed tokens ``[B, T, C]`` -> patch features ``[B, C, h, w]`` (prefix tokens dropped)."""
    h, w = grid
    return tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


def features_and_tail_tokens(encoder: AnyEncoder, images: torch.Tensor, tail: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass: the encoder's features ``[B, L*C, H/p, W/p]`` (exactly ``encoder(images)``, its ``layers``
    included) and `tail_tokens` ``[B, T, C]``, for extraction."""
    check_tail(encoder, tail)
    x = _embed(encoder, images)
    grid = (images.shape[-2] // encoder.patch_size, images.shape[-1] // encoder.patch_size)
    blocks, norm, start = _blocks(encoder), _norm(encoder), encoder.depth - tail
    tokens = x if start == 0 else None
    taken = []
    for number, block in enumerate(blocks[: max(encoder.layers[-1], start)], start=1):
        x = block(x)
        if number == start:
            tokens = x
        if number in encoder.layers:
            taken.append(norm(x))
    features = torch.cat(taken, dim=-1) if len(taken) > 1 else taken[0]
    return _to_map(features, num_prefix_tokens(encoder), grid), tokens


def _check_train_blocks(train_blocks: int, tail: int) -> None:
    if train_blocks < 1:
        raise OptionError(
            f"--train-blocks {train_blocks}: 0 blocks trained is mode C (the stored features); give 1 or more"
        )
    if train_blocks > tail:
        raise FeatcacheError(
            f"--train-blocks {train_blocks} is more than the {tail} blocks whose input tokens the store holds; "
            f"extract again with --tail-tokens {train_blocks} or more"
        )


def _grid(tokens: torch.Tensor, prefix: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """The patch grid of ``tokens`` ``[B, T, C]``: ``grid`` checked, or a square one derived from T."""
    n = tokens.shape[1] - prefix
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not make a square grid; pass grid=(h, w)")
        return side, side
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid {grid} does not hold the {n} patch tokens")
    return grid


class TailEncoder(nn.Module):
    """The encoder's last K blocks and final norm, of which the top k train: tokens ``[B, T, C]`` entering
    block D-K+1 (`tail_tokens`) -> patch features ``[B, C, h, w]``, exactly the encoder's own output.

    Holds copies (the encoder is not kept): ``frozen`` = blocks D-K+1..D-k (no gradients, eval mode),
    ``trained`` = blocks D-k+1..D, ``norm`` = the final norm (both trainable). ``tail`` = K,
    ``train_blocks`` = k, 1 <= k <= K <= D.
    """

    def __init__(self, encoder: AnyEncoder, *, tail: int, train_blocks: int) -> None:
        super().__init__()
        check_tail(encoder, tail)
        _check_train_blocks(train_blocks, tail)
        depth = encoder.depth
        blocks, names = _blocks(encoder), _module_names(encoder)
        self.tail, self.train_blocks, self.depth = tail, train_blocks, depth
        self.prefix_tokens = num_prefix_tokens(encoder)
        self.patch_size = encoder.patch_size
        self.width = encoder.layer_width
        self.frozen = nn.ModuleList(copy.deepcopy(b) for b in blocks[depth - tail : depth - train_blocks])
        self.trained = nn.ModuleList(copy.deepcopy(b) for b in blocks[depth - train_blocks :])
        self.norm = copy.deepcopy(_norm(encoder))
        self.frozen.requires_grad_(False)
        self.trained.requires_grad_(True)
        self.norm.requires_grad_(True)
        # net name prefix -> encoder state-dict prefix, for `encoder_key`
        self._prefixes = {f"trained.{i}.": names[id(b)] + "." for i, b in enumerate(blocks[depth - train_blocks :])}
        self._prefixes["norm."] = names[id(_norm(encoder))] + "."
        self.train()

    def train(self, mode: bool = True) -> TailEncoder:
        super().train(mode)
        self.frozen.eval()
        return self

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T, C]`` entering block D-K+1 -> those entering block D-k+1 (the frozen blocks, without
        gradients): equal to `tail_tokens` for k, so they can be computed once and fed to a k-tail. Tokens of
        another dtype (a float16 store's) are cast to the blocks' own."""
        tokens = tokens.to(next(self.trained.parameters()).dtype)
        with torch.no_grad():
            for block in self.frozen:
                tokens = block(tokens)
        return tokens

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens ``[B, T, C]`` entering block D-K+1 -> patch features ``[B, C, h, w]``; ``grid`` = (h, w), derived
        from T when the grid is square."""
        hw = _grid(tokens, self.prefix_tokens, grid)
        x = self.advance(tokens)
        for block in self.trained:
            x = block(x)
        return _to_map(self.norm(x), self.prefix_tokens, hw)

    def encoder_key(self, name: str) -> str | None:
        """A parameter/buffer name of the trainable top (``trained.0.mlp.0.weight``) -> the encoder's own
        (``encoder.layers.encoder_layer_3.mlp.0.weight``); None for the frozen blocks."""
        return next((enc + name[len(own) :] for own, enc in self._prefixes.items() if name.startswith(own)), None)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trainable blocks and the final norm as a partial state dict of the encoder (its own keys)."""
        return _trained_state(self)


class PartlyFrozenEncoder(nn.Module):
    """The Pk network: a copy of the encoder whose blocks 1..D-k run frozen (no gradients, eval mode) and whose
    last k blocks and final norm train. Images ``[B, 3, H, W]`` in [0, 1] -> patch features ``[B, C, H/p, W/p]``,
    the same function as `TailEncoder` of the same k on `tail_tokens`.

    ``encoder`` is the whole copy (its state dict the encoder's, under ``encoder.``). The embedding stays frozen
    even at k = D. ``width`` (C) and ``patch_size`` as `TailEncoder`'s.
    """

    def __init__(self, encoder: AnyEncoder, *, train_blocks: int) -> None:
        super().__init__()
        _check_kind(encoder)
        if train_blocks > encoder.depth:
            raise OptionError(f"--train-blocks {train_blocks}: {encoder.arch} has {encoder.depth} blocks")
        _check_train_blocks(train_blocks, encoder.depth)  # k = 0
        self.encoder = copy.deepcopy(encoder)
        self.train_blocks = train_blocks
        self.prefix_tokens = num_prefix_tokens(encoder)
        self.patch_size = encoder.patch_size
        self.width = encoder.layer_width
        self.encoder.requires_grad_(False)
        for module in self._top():
            module.requires_grad_(True)
        self.train()

    def _top(self) -> list[nn.Module]:
        return [*_blocks(self.encoder)[self.encoder.depth - self.train_blocks :], _norm(self.encoder)]

    def train(self, mode: bool = True) -> PartlyFrozenEncoder:
        super().train(mode)
        self.encoder.eval()
        for module in self._top():
            module.train(mode)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> patch features ``[B, C, H/p, W/p]``."""
        with torch.no_grad():
            x = tail_tokens(self.encoder, images, self.train_blocks)
        *blocks, norm = self._top()
        for block in blocks:
            x = block(x)
        p = self.patch_size
        return _to_map(norm(x), self.prefix_tokens, (images.shape[-2] // p, images.shape[-1] // p))

    def encoder_key(self, name: str) -> str | None:
        """A parameter/buffer name of the trainable top -> the encoder's own; None for the frozen part."""
        prefixes = [n + "." for n, m in self.encoder.named_modules() if any(m is t for t in self._top())]
        key = name.removeprefix("encoder.")
        return key if any(key.startswith(p) for p in prefixes) else None

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The trainable blocks and the final norm as a partial state dict of the encoder (its own keys)."""
        return _trained_state(self)


TrainedTop = TailEncoder | PartlyFrozenEncoder


def _trained_state(net: TrainedTop) -> dict[str, torch.Tensor]:
    if has_lora(net):
        raise ValueError("merge the LoRA adapters first (featcache.models.lora.merge_lora, or top_state)")
    out = {}
    for name, value in net.state_dict().items():
        key = net.encoder_key(name)
        if key is not None:
            out[key] = value.detach().clone()
    return out


def has_lora(net: nn.Module) -> bool:
    """Whether ``net`` carries peft adapters (without importing peft)."""
    return any(type(m).__module__.startswith("peft.") for m in net.modules())
