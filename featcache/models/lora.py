"""LoRA adapters on the trainable blocks of a `TailEncoder` or `PartlyFrozenEncoder`, through ``peft``.

Which layers carry adapters: every linear layer of the trained blocks. timm blocks: ``attn.qkv``,
``attn.proj``, ``mlp.fc1``, ``mlp.fc2`` (and whatever other ``nn.Linear`` a block has). torchvision blocks
keep q/k/v in ``MultiheadAttention.in_proj_weight``, a raw parameter, and ``MultiheadAttention`` reads
``out_proj.weight`` directly without calling ``out_proj``: an adapter on ``self_attention.out_proj`` alone is
never run. So the whole ``self_attention`` is targeted, which peft's ``MultiheadAttention`` LoRA layer adapts
as in_proj (q/k/v together) and out_proj; plus ``mlp.0`` and ``mlp.3``. That peft layer merges its adapters
into the frozen weights before each forward and subtracts them after, so those frozen weights drift by
float rounding (about 1e-7 after hundreds of steps) and the module is not CUDA-graph safe.

With adapters on, only they train: the blocks' own weights, their biases and norms, and the final norm are
frozen (peft's ``bias="none"``). LoRA's B starts at zero, so the net starts as the plain one.
``peft`` is optional: ``pip install 'featcache[peft]'``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from torch import nn

from featcache.core.errors import FeatcacheError, OptionError
from featcache.models.spec import AnyEncoder
from featcache.models.tail import TrainedTop, has_lora

INSTALL = "pip install 'featcache[peft]'"


def import_peft():
    """The peft module, or one line with the command that installs it."""
    try:
        import peft
    except ImportError:
        raise FeatcacheError(f"--lora-rank needs the peft package; install it with `{INSTALL}`") from None
    return peft


@dataclass(frozen=True)
class LoraSummary:
    """What a LoRA run records: rank, alpha, the encoder state-dict keys of the weights that adapters update
    (merged into them on `merge_lora`) and the number of parameters that train in the net (the adapters)."""

    rank: int
    alpha: float
    weights: tuple[str, ...]
    trainable: int

    def to_dict(self) -> dict:
        return {**asdict(self), "weights": list(self.weights)}


def lora_targets(net: TrainedTop) -> dict[str, tuple[str, ...]]:
    """The modules of the net's trained blocks that take adapters: ``{net module name: encoder weight keys it
    updates}`` (a torchvision ``self_attention`` updates ``in_proj_weight`` and ``out_proj.weight``)."""
    targets: dict[str, tuple[str, ...]] = {}
    attention: list[str] = []
    for name, module in net.named_modules():
        key = net.encoder_key(name + ".")  # None outside the trained blocks
        if key is None:
            continue
        if isinstance(module, nn.MultiheadAttention):
            targets[name] = (f"{key}in_proj_weight", f"{key}out_proj.weight")
            attention.append(name + ".")
        elif isinstance(module, nn.Linear) and not any(name.startswith(a) for a in attention):
            targets[name] = (f"{key}weight",)
    return targets


def add_lora(net: TrainedTop, *, rank: int, alpha: float) -> LoraSummary:
    """Put LoRA adapters of ``rank`` (scaling ``alpha / rank``) on the linear layers of the net's trained blocks,
    in place; everything else in the net is frozen. Adapters are drawn from torch's global generator (seed it
    for reproducible runs). Returns what the run records."""
    if rank < 1:
        raise OptionError(f"--lora-rank {rank} must be at least 1")
    if not alpha > 0:
        raise OptionError(f"--lora-alpha {alpha} must be positive")
    if has_lora(net):
        raise ValueError("the net already carries LoRA adapters")
    peft = import_peft()
    targets = lora_targets(net)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(targets))
    peft.inject_adapter_in_model(config, net)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    weights = tuple(key for keys in targets.values() for key in keys)
    return LoraSummary(rank=rank, alpha=float(alpha), weights=weights, trainable=trainable)


def merge_lora(net: nn.Module) -> None:
    """Merge the adapters into their layers' weights and put the plain layers back, in place (what peft's
    ``merge_and_unload`` does for a ``PeftModel``): the net's state dict has its plain keys again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [name for name, m in net.named_modules() if isinstance(m, BaseTunerLayer)]
    outermost = [n for n in layers if not any(n.startswith(o + ".") for o in layers)]
    for name in outermost:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name)
        layer = getattr(parent, child)
        if hasattr(layer, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention
            plain = layer.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            layer.merge(safe_merge=True)
            plain = layer.get_base_layer()
        setattr(parent, child, plain)
    if "peft_config" in net.__dict__:
        del net.peft_config


def top_state(net: TrainedTop) -> dict:
    """The net's trained blocks and final norm as a partial state dict of the encoder it was built from (the
    encoder's own keys), LoRA adapters merged into their weights (on a copy: the net keeps its adapters)."""
    if not has_lora(net):
        return net.trained_state()
    top = copy.deepcopy(net)
    merge_lora(top)
    return top.trained_state()


def merged_encoder(encoder: AnyEncoder, net: TrainedTop) -> AnyEncoder:
    """A copy of ``encoder`` (the one the net was built from) with the net's trained blocks and final norm, LoRA
    adapters merged: a plain encoder again, whose ``encoder(images)`` equals the net's output and whose state
    dict loads as the encoder's. Its ``source`` record is dropped: the caller records where it came from."""
    state = top_state(net)
    merged = copy.deepcopy(encoder)
    unknown = set(state) - set(merged.state_dict())
    if unknown:
        raise ValueError(f"the net was not built from this encoder: {sorted(unknown)[:2]} are not its keys")
    merged.load_state_dict(state, strict=False)
    merged.__dict__.pop("source", None)
    return merged
