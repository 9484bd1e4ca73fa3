"""The networks: encoders (torchvision ViTs, any timm backbone), their weights and the record of where they came
from, and the decoders trained on their features; nothing of storage."""

from featcache.models.decoders import DECODERS, LinearProbe, ReconstructionDecoder, SegmentationDecoder, build_decoder
from featcache.models.lora import add_lora, merge_lora, merged_encoder
from featcache.models.naming import encoder_words
from featcache.models.record import EncoderRecord, WeightsSource, record_of
from featcache.models.spec import AnyEncoder, EncoderSpec, build_encoder
from featcache.models.tail import PartlyFrozenEncoder, TailEncoder, tail_tokens
from featcache.models.timm_vit import TimmEncoder
from featcache.models.vit import ARCHITECTURES, Encoder, EncoderConfig
from featcache.models.weights import weights_sha256

__all__ = [
    "ARCHITECTURES",
    "DECODERS",
    "AnyEncoder",
    "Encoder",
    "EncoderConfig",
    "EncoderRecord",
    "EncoderSpec",
    "LinearProbe",
    "PartlyFrozenEncoder",
    "ReconstructionDecoder",
    "SegmentationDecoder",
    "TailEncoder",
    "TimmEncoder",
    "WeightsSource",
    "add_lora",
    "build_decoder",
    "build_encoder",
    "encoder_words",
    "merge_lora",
    "merged_encoder",
    "record_of",
    "tail_tokens",
    "weights_sha256",
]
