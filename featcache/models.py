"""Encoders (torchvision ViTs with the study's defects removed, or any timm backbone: `featcache.timm_encoder`)
and the decoders trained on them.

Shapes: images are float ``[B, 3, H, W]`` in [0, 1]; an encoder returns patch features
``[B, L*C, H/p, W/p]`` (p = patch size, 16 for every named torchvision architecture; L = the number of
blocks it reads, 1 by default); the segmentation decoders return logits ``[B, 1, p*h, p*w]`` for
features of an ``h x w`` grid (the image size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from featcache.errors import FeatcacheError, OptionError
from featcache.io import safe_torch_load
from featcache.runtime import seeded
from featcache.timm_encoder import PREFIX as TIMM_PREFIX
from featcache.timm_encoder import TimmEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The file torchvision's ``ViT_B_16_Weights.IMAGENET1K_V1`` downloads (the name carries a hash).
IMAGENET_URLS: dict[str, str] = {
    "vit_b_16": "https://download.pytorch.org/models/vit_b_16-c867db91.pth",
}

#: A featcache encoder checkpoint is a dict with this value under ``"format"``.
ENCODER_CHECKPOINT_FORMAT = "featcache-encoder/1"


@dataclass(frozen=True)
class EncoderConfig:
    """A ViT architecture as torchvision's ``VisionTransformer`` takes it."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    image_size: int = 224


ARCHITECTURES: dict[str, EncoderConfig] = {
    "vit_b_16": EncoderConfig(16, 12, 12, 768, 3072),
    "vit_s_16": EncoderConfig(16, 12, 6, 384, 1536),
    "vit_ti_16": EncoderConfig(16, 12, 3, 192, 768),
    "vit_mini": EncoderConfig(16, 4, 4, 128, 256),
    "vit_micro": EncoderConfig(16, 2, 2, 32, 64),
}


def resolve_layers(layers: Sequence[int] | None, depth: int, arch: str) -> tuple[int, ...]:
    """Block numbers (1-based; -1 the last block, -2 the one before, ...) -> sorted distinct 1-based numbers.

    None: the last block alone (the final normed output).
    """
    if layers is None:
        return (depth,)
    out = set()
    for k in layers:
        if not (1 <= k <= depth or -depth <= k <= -1):
            raise OptionError(
                f"--layers {','.join(map(str, layers))}: {arch} has {depth} blocks; "
                f"give block numbers 1 to {depth}, or -1 (the last) to -{depth}"
            )
        out.add(k if k > 0 else depth + 1 + k)
    if not out:
        raise OptionError("--layers is empty; give block numbers such as -1 or 3,6,9,12")
    return tuple(sorted(out))


def parse_layers(text: str) -> tuple[int, ...]:
    """``"3,6,9,12"`` or ``"-4,-3,-2,-1"`` -> a tuple of block numbers (checked against a model by `resolve_layers`)."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionError(f"--layers {text!r} is not a list of block numbers like -1 or 3,6,9,12") from None
    if not values or 0 in values:
        raise OptionError(f"--layers {text!r}: give block numbers from 1 (or -1 for the last), e.g. 3,6,9,12")
    return values


def architecture(name: str) -> EncoderConfig:
    """The config of a named architecture, or an error listing the names."""
    if name not in ARCHITECTURES:
        raise OptionError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


class Encoder(nn.Module):
    """A frozen-or-trainable ViT that maps images to a grid of patch features.

    Built from torchvision's ``VisionTransformer`` and keeping its parameter names
    (``conv_proj``, ``class_token``, ``encoder.*``), so a torchvision state dict loads directly
    (minus the classification head). Unlike the study's code it normalises with ImageNet
    mean/std, adds the positional embedding once and applies the final LayerNorm once.
    Other image sizes work: the positional embedding is interpolated (bicubic) to the grid.
    ``layers`` (see `resolve_layers`): the blocks whose outputs (each through the final LayerNorm) are
    returned, concatenated on channels; by default the last one.
    """

    def __init__(self, arch: str, config: EncoderConfig, layers: Sequence[int] | None = None) -> None:
        super().__init__()
        vit = VisionTransformer(
            image_size=config.image_size,
            patch_size=config.patch_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            hidden_dim=config.hidden_dim,
            mlp_dim=config.mlp_dim,
        )
        self.arch = arch
        self.config = config
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder
        self.layers = resolve_layers(layers, config.num_layers, arch)
        # Not persistent: the state dict stays exactly torchvision's key set without the head.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        """Channels L*C of the patch features (C per block read)."""
        return self.config.hidden_dim * len(self.layers)

    @property
    def layer_width(self) -> int:
        return self.config.hidden_dim

    @property
    def depth(self) -> int:
        return self.config.num_layers

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def _pos_embedding(self, h: int, w: int) -> torch.Tensor:
        """Positional embedding ``[1, 1 + h*w, C]`` for an ``h x w`` patch grid."""
        pos = self.encoder.pos_embedding
        grid = self.config.image_size // self.config.patch_size
        if (h, w) == (grid, grid):
            return pos
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        patch_pos = patch_pos.reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)

    def forward_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Final-LayerNorm tokens ``[B, 1 + h*w, L*C]`` (CLS first; the blocks of ``layers`` side by side on
        channels) and the grid ``h, w``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        p = self.config.patch_size
        if images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        x = (images - self.mean) / self.std
        x = self.conv_proj(x)  # [B, C, h, w]
        b, _, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(b, -1, -1), x], dim=1)
        x = x + self._pos_embedding(h, w)
        x = self.encoder.dropout(x)
        if self.layers == (self.depth,):
            return self.encoder.ln(self.encoder.layers(x)), h, w
        taken = []
        for k, block in enumerate(self.encoder.layers[: self.layers[-1]], start=1):
            x = block(x)
            if k in self.layers:
                taken.append(self.encoder.ln(x))
        return torch.cat(taken, dim=-1), h, w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, L*C, H/p, W/p]`` (the CLS token dropped)."""
        tokens, h, w = self.forward_tokens(images)
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


class ReconstructionDecoder(nn.Module):
    """The study's RD: four [Conv3x3, ReLU, Upsample x2 nearest] 768->512->256->128->64, Conv3x3 -> 3, Sigmoid.

    ``[B, C, h, w]`` features -> ``[B, 3, p*h, p*w]`` image in [0, 1] (p = ``patch_size``: bilinearly resized
    after the x16 path when p is not 16). 5,089,923 parameters at C = 768.
    """

    def __init__(self, in_channels: int = 768, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        for cin, cout in zip((in_channels, 512, 256, 128), (512, 256, 128, 64), strict=True):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="nearest"),
            ]
        layers += [nn.Conv2d(64, 3, 3, padding=1), nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return to_patch_scale(self.layers(features), features, self.patch_size)


def to_patch_scale(out: torch.Tensor, features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``out`` ``[B, K, 16h, 16w]`` of features ``[B, C, h, w]`` bilinearly resized to the image size
    ``[B, K, p*h, p*w]`` (a no-op for p = 16)."""
    size = (features.shape[-2] * patch_size, features.shape[-1] * patch_size)
    if tuple(out.shape[-2:]) == size:
        return out
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class SegmentationDecoder(nn.Module):
    """The study's SD: four [Conv3x3, BatchNorm, ReLU, Upsample x2 bilinear] C->256->128->64->32, Conv1x1 -> 1.

    ``[B, C, h, w]`` features -> logits ``[B, 1, p*h, p*w]`` (p = ``patch_size``: the x16 path, then bilinearly
    resized to the image size when p is not 16). 2,158,017 parameters at C = 768.
    With ``groups = K`` it is K independent decoders in one network (grouped convolutions, per-group
    BatchNorm channels): ``[B, K*C, h, w]`` -> ``[B, K, 16h, 16w]``, group k reading channels
    ``k*C:(k+1)*C``; see `group_state` / `stack_states`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1, patch_size: int = 16) -> None:
        super().__init__()
        self.patch_size = patch_size
        layers: list[nn.Module] = []
        g = groups
        for cin, cout in zip((in_channels, 256, 128, 64), (256, 128, 64, 32), strict=True):
            layers += [
                nn.Conv2d(cin * g, cout * g, 3, padding=1, groups=g),
                nn.BatchNorm2d(cout * g),
                nn.ReLU(inplace=True),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            ]
        layers.append(nn.Conv2d(32 * g, g, 1, groups=g))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return to_patch_scale(self.layers(features), features, self.patch_size)


class LinearProbe(nn.Module):
    """A per-patch linear classifier: Conv1x1(C -> 1), logits upsampled x p (the patch size) bilinearly.

    ``[B, C, h, w]`` features -> logits ``[B, 1, p*h, p*w]``; C + 1 parameters. ``groups``: as
    `SegmentationDecoder`.
    """

    def __init__(self, in_channels: int = 768, groups: int = 1, patch_size: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels * groups, groups, 1, groups=groups)
        self.scale = patch_size

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.proj(features), scale_factor=self.scale, mode="bilinear", align_corners=False)


DECODERS: dict[str, type[nn.Module]] = {"sd": SegmentationDecoder, "linear": LinearProbe}


def build_decoder(name: str, in_channels: int, groups: int = 1, patch_size: int = 16) -> nn.Module:
    """A segmentation decoder by name (``sd`` or ``linear``) for features of ``in_channels`` from an encoder of
    ``patch_size`` (its logits are at the image size); ``groups`` of them in one."""
    if name not in DECODERS:
        raise OptionError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
    return DECODERS[name](in_channels, groups, patch_size)


def stack_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """K single decoders' state dicts -> the state dict of their grouped decoder (``groups=K``).

    Every parameter and BatchNorm buffer of a grouped layer is its groups' tensors concatenated
    along dim 0 (output channels); the scalar batch counters are shared.
    """
    return {k: v if v.ndim == 0 else torch.cat([s[k] for s in states]) for k, v in states[0].items()}


def group_state(
    state: dict[str, torch.Tensor], k: int, groups: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Group ``k``'s slice of a grouped decoder's state dict: a plain (``groups=1``) decoder's state, copied.

    On the CPU by default, so that slices taken at different times (some loaded from a resume state) stack
    together; the training loop keeps its copies on the device until the run ends (`featcache.loop.on_cpu`).
    """
    return {
        name: (v if v.ndim == 0 else v.chunk(groups)[k]).detach().to(device, copy=True) for name, v in state.items()
    }


def weights_sha256(module: nn.Module) -> str:
    """A hash of a module's state dict (names, dtypes, shapes and values), independent of files."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights_path(arch: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of ``arch`` ($TORCH_HOME/hub/checkpoints)."""
    if arch not in IMAGENET_URLS:
        raise FeatcacheError(
            f"no ImageNet weights are known for {arch!r} (only {', '.join(IMAGENET_URLS)}); start from random "
            "weights or a weights file instead"
        )
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URLS[arch].rsplit("/", 1)[-1]


def _download_imagenet(arch: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(IMAGENET_URLS[arch], str(target), progress=True)


def _imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    path = imagenet_weights_path(arch)
    if not path.exists():
        try:
            _download_imagenet(arch, path)
        except Exception as exc:  # no network, proxy refusal, DNS failure: all end the same way
            raise FeatcacheError(
                f"ImageNet weights for {arch} are not in torchvision's cache and could not be downloaded "
                f"({type(exc).__name__}); put {IMAGENET_URLS[arch]} at {path} (or set TORCH_HOME)"
            ) from exc
    return safe_torch_load(path)


def _shape_of(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(hidden width, number of blocks) of a torchvision ViT state dict, or None if it is not one."""
    if "conv_proj.weight" not in state:
        return None
    blocks = {k.split(".")[2] for k in state if k.startswith("encoder.layers.")}
    return state["conv_proj.weight"].shape[0], len(blocks)


def load_encoder_weights(encoder: Encoder, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-format ViT state dict, asserting that exactly the head was left out."""
    body = {k: v for k, v in state.items() if not k.startswith("heads.")}  # the classifier is not used
    theirs, ours = _shape_of(body), (encoder.width, encoder.config.num_layers)
    if theirs is not None and theirs != ours:
        raise FeatcacheError(
            f"{source} holds another architecture (width {theirs[0]}, {theirs[1]} blocks) than {encoder.arch} "
            f"(width {ours[0]}, {ours[1]} blocks); pass the matching --arch"
        )
    expected = set(encoder.state_dict())
    missing, unexpected = expected - set(body), set(body) - expected
    if missing or unexpected:
        raise FeatcacheError(
            f"{source} is not a {encoder.arch} state dict: {len(missing)} keys missing "
            f"(e.g. {sorted(missing)[:2]}), {len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]})"
        )
    own = encoder.state_dict()
    for key, value in body.items():
        if value.shape != own[key].shape:
            raise FeatcacheError(
                f"{source} does not fit {encoder.arch}: {key} is {tuple(value.shape)}, expected {tuple(own[key].shape)}"
            )
    encoder.load_state_dict(body, strict=True)


#: Either kind of encoder: both map images ``[B, 3, H, W]`` in [0, 1] to features ``[B, L*C, H/p, W/p]``.
AnyEncoder = Encoder | TimmEncoder


def encoder_choice(
    encoder: str, arch: str, weights: str | None = None, model_kwargs: dict | None = None
) -> tuple[str, str]:
    """The ``(arch, weights)`` of `build_encoder` from the command line's ``--encoder`` (imagenet, random, a file,
    or ``timm:NAME``), ``--arch`` and ``--encoder-weights`` (a timm model's: None for its pretrained ones)."""
    if str(encoder).startswith(TIMM_PREFIX):
        return str(encoder), weights or "pretrained"
    if weights is not None or model_kwargs:
        option = "--encoder-weights" if weights is not None else "--model-kwargs"
        raise OptionError(
            f"{option} goes with --encoder timm:NAME; a torchvision encoder takes its weights as "
            "--encoder imagenet | random | FILE"
        )
    return arch, str(encoder)


def build_encoder(
    arch: str = "vit_b_16",
    weights: str | Path = "random",
    seed: int = 0,
    layers: Sequence[int] | None = None,
    model_kwargs: dict | None = None,
) -> Encoder:
    """An encoder of a named architecture with its starting weights, reading the blocks ``layers`` (`resolve_layers`).

    ``arch``: a torchvision architecture (`ARCHITECTURES`) or ``timm:NAME`` (any timm model name, built with
    ``model_kwargs``; see `featcache.timm_encoder`). ``weights``: ``"random"`` (the library's initialisation
    under ``seed``), ``"imagenet"`` (torchvision's IMAGENET1K_V1 file, from its cache or downloaded where
    reachable), ``"pretrained"`` (a timm model's own weights, from timm's cache or downloaded), ``"timm:NAME"``
    (that timm model with its pretrained weights, whatever ``arch``), a weights file (a torchvision state dict;
    for timm, safetensors or a state dict), or a featcache encoder checkpoint (whose architecture wins over
    ``arch``). The returned encoder records ``source`` (a JSON-able dict of where its weights came from) and is
    in eval mode.
    """
    weights_str = str(weights)
    if weights_str.startswith(TIMM_PREFIX):
        arch, weights_str = weights_str, "pretrained"
    path = None if weights_str in ("random", "imagenet", "pretrained") else Path(weights_str)
    ckpt = None
    loaded = None
    if path is not None:
        if not path.is_file():
            raise FeatcacheError(f"encoder weights {path} not found; pass imagenet, random or an existing file")
        if path.suffix != ".safetensors":
            loaded = safe_torch_load(path)
        if isinstance(loaded, dict) and loaded.get("format") == ENCODER_CHECKPOINT_FORMAT:
            ckpt = loaded
            arch = ckpt["arch"]
    if arch.startswith(TIMM_PREFIX):
        return _build_timm(arch[len(TIMM_PREFIX) :], weights_str, seed, layers, model_kwargs, ckpt, path)
    if weights_str == "pretrained":
        raise FeatcacheError(
            f"pretrained names a timm model's own weights; the torchvision {arch} takes imagenet, "
            "random or a weights file (or pass --encoder timm:NAME)"
        )
    if path is not None and loaded is None:
        raise FeatcacheError(
            f"{path}: the torchvision {arch} takes a torch state-dict file (.pt/.pth); "
            "safetensors files are for timm encoders (--encoder timm:NAME --encoder-weights FILE)"
        )
    config = EncoderConfig(**ckpt["config"]) if ckpt else architecture(arch)
    with seeded(seed):
        encoder = Encoder(arch, config, layers)
    if weights_str == "random":
        source: dict = {"kind": "random", "seed": seed}
    elif weights_str == "imagenet":
        load_encoder_weights(encoder, _imagenet_state_dict(arch), f"ImageNet weights for {arch}")
        source = {"kind": "imagenet", "file": imagenet_weights_path(arch).name}
    elif ckpt is not None:
        load_encoder_weights(encoder, ckpt["state_dict"], str(path))
        source = {
            "kind": "featcache",
            "file": str(path.resolve()),
            "sha256": file_sha256(path),
            "init": ckpt.get("init"),
        }
    else:
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise FeatcacheError(f"{path} is neither a torchvision state dict nor a featcache encoder checkpoint")
        load_encoder_weights(encoder, loaded, str(path))
        source = {"kind": "file", "file": str(path.resolve()), "sha256": file_sha256(path)}
    encoder.source = source
    return encoder.eval()


def _build_timm(
    name: str,
    weights: str,
    seed: int,
    layers: Sequence[int] | None,
    model_kwargs: dict | None,
    ckpt: dict | None,
    path: Path | None,
) -> TimmEncoder:
    """A `TimmEncoder`; a featcache checkpoint of one is its model (built with the checkpoint's options) and weights."""
    from featcache.timm_encoder import create

    if ckpt is not None:
        kwargs = ckpt["config"]["model_kwargs"]
        model, _ = create(name, "random", seed, kwargs)
        encoder = TimmEncoder(name, model, kwargs, layers)
        try:
            encoder.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:200]
            raise FeatcacheError(
                f"{path} does not fit timm:{name} ({detail}); write it again with featcache pretrain"
            ) from exc
        encoder.source = {
            "kind": "featcache",
            "file": str(path.resolve()),
            "sha256": file_sha256(path),
            "init": ckpt.get("init"),
        }
        return encoder.eval()
    if weights == "imagenet":
        raise FeatcacheError(
            f"imagenet names torchvision's weights; timm:{name} takes its own (leave out "
            "--encoder-weights), random or a weights file"
        )
    kwargs = dict(model_kwargs or {})
    model, source = create(name, weights, seed, kwargs)
    encoder = TimmEncoder(name, model, kwargs, layers)
    encoder.source = source
    return encoder.eval()


def encoder_config(encoder: Encoder | TimmEncoder) -> dict:
    """The architecture options a featcache encoder checkpoint records, for `build_encoder` to rebuild it."""
    if isinstance(encoder, Encoder):
        return asdict(encoder.config)
    return {"model_kwargs": encoder.model_kwargs}


def normalisation(encoder: Encoder | TimmEncoder) -> dict:
    """The mean/std (per RGB channel, pixel range [0, 1]) the encoder normalises its input with."""
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if isinstance(encoder, Encoder) else encoder.mean_std
    return {"mean": list(mean), "std": list(std)}


def encoder_provenance(encoder: Encoder | TimmEncoder) -> dict:
    """JSON-able identity of an encoder: architecture, config, where its weights came from, their hash, its
    normalisation; ``layers`` when it reads other blocks than the last (a one-layer store keeps the old record).

    For a timm model also the library and its version, the model name, pretrained tag, patch size and depth.
    """
    if isinstance(encoder, Encoder):
        prov = {"arch": encoder.arch, "config": asdict(encoder.config), "normalisation": normalisation(encoder)}
    else:
        prov = {"arch": encoder.arch, **encoder.provenance()}
    prov["source"] = getattr(encoder, "source", {"kind": "unknown"})
    prov["weights_sha256"] = weights_sha256(encoder)
    if encoder.layers != (encoder.depth,):
        prov["layers"] = list(encoder.layers)
    return prov


def recorded_depth(prov: dict) -> int:
    """The number of blocks of a recorded encoder (`encoder_provenance`)."""
    config = prov["config"]
    return int(config["depth"] if "depth" in config else config["num_layers"])


def recorded_layers(prov: dict) -> tuple[int, ...]:
    """The 1-based blocks a recorded encoder read (a record without ``layers``: the last block alone)."""
    return tuple(prov.get("layers") or (recorded_depth(prov),))


def _model_kwargs(prov: dict) -> dict | None:
    return prov["config"].get("model_kwargs") if prov["arch"].startswith(TIMM_PREFIX) else None


def encoder_like(prov: dict, weights: str | Path, layers: Sequence[int] | None = None) -> Encoder | TimmEncoder:
    """An encoder of the architecture recorded in ``prov`` (`encoder_provenance`; a timm model with its
    recorded build options) with other ``weights`` (see `build_encoder`), reading ``layers`` (None: the
    recorded ones)."""
    return build_encoder(
        prov["arch"],
        weights,
        seed=prov["source"].get("seed", 0),
        layers=recorded_layers(prov) if layers is None else layers,
        model_kwargs=_model_kwargs(prov),
    )


def encoder_from_provenance(
    arch: str,
    source: dict,
    sha256: str,
    weights: str | Path | None = None,
    layers: Sequence[int] | None = None,
    model_kwargs: dict | None = None,
) -> Encoder:
    """Rebuild an encoder from a recorded ``source`` and prove it is the same one by its weights' hash.

    ``weights``: where the recorded weights file is now, if it moved (checked by the hash all the same);
    ``model_kwargs``: a timm model's recorded build options; ``layers``: the blocks it reads.
    """
    kind = source.get("kind")
    options = {"layers": layers, "model_kwargs": model_kwargs}
    if weights is not None:
        encoder = build_encoder(arch, weights, seed=source.get("seed", 0), **options)
    elif kind == "random":
        encoder = build_encoder(arch, "random", seed=source["seed"], **options)
    elif kind in ("imagenet", "timm"):
        encoder = build_encoder(arch, "imagenet" if kind == "imagenet" else "pretrained", **options)
    elif kind in ("file", "featcache"):
        if not Path(source["file"]).is_file():
            raise FeatcacheError(
                f"the encoder weights {source['file']} that the features were extracted with are not there; "
                "pass --encoder with the file's new path (it is checked against the recorded hash)"
            )
        encoder = build_encoder(arch, source["file"], **options)
    else:
        raise FeatcacheError(f"cannot rebuild an encoder of unknown origin {source}")
    if weights_sha256(encoder) != sha256:
        where = source.get("file", kind)
        raise FeatcacheError(
            f"the {arch} encoder rebuilt from {where} has other weights ({weights_sha256(encoder)[:10]}…) than "
            f"the one recorded ({sha256[:10]}…); restore that weights file"
        )
    return encoder


def rebuild_encoder(
    prov: dict, weights: str | Path | None = None, layers: Sequence[int] | None = None
) -> Encoder | TimmEncoder:
    """`encoder_from_provenance` of a whole record (`encoder_provenance`), reading ``layers`` (None: the recorded
    ones)."""
    return encoder_from_provenance(
        prov["arch"],
        prov["source"],
        prov["weights_sha256"],
        weights,
        recorded_layers(prov) if layers is None else layers,
        _model_kwargs(prov),
    )
