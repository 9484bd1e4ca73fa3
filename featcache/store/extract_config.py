"""What ``featcache extract`` takes: `ExtractConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from featcache.core.errors import OptionError, check_at_least, check_choice
from featcache.data.layouts import SplitConfig
from featcache.models.spec import EncoderSpec
from featcache.store.backend import backend_kind
from featcache.store.schema import FEATURE_DTYPES, VIEWS


@dataclass
class ExtractConfig:
    """Everything ``featcache extract`` takes.

    ``encoder``: ``imagenet``, ``random`` or a weights file (of the torchvision ``arch``), or ``timm:NAME`` with
    ``encoder_weights`` (None: timm's own pretrained weights; ``random``; a file) and ``model_kwargs``
    (`EncoderSpec.parse`). ``layers``: the blocks stored (`featcache.models.vit.resolve_layers`; None: the last,
    the final normed output). ``writers``: threads compressing and writing blocks (None: one for HDF5, whose
    library serialises every call, and up to 4 for Zarr, whose codecs release the GIL). ``tail_tokens`` K: also
    store the tokens entering the encoder's last K blocks (the ``tokens`` array, for modes Tk; None: none).
    """

    data: Path
    out: str
    encoder: str = "imagenet"
    arch: str = "vit_b_16"
    encoder_weights: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    layers: tuple[int, ...] | None = None
    seed: int = 0
    image_size: int = 224
    views: str = "identity"
    dtype: str = "float16"
    batch_size: int = 32
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    writers: int | None = None
    shard_size: int = 32
    compressor: str = "auto"
    overwrite: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    skip_bad: bool = False
    skip_unpaired: bool = False
    strict: bool = False
    tail_tokens: int | None = None

    def encoder_spec(self) -> EncoderSpec:
        """The encoder these options name."""
        return EncoderSpec.parse(
            self.encoder,
            arch=self.arch,
            weights=self.encoder_weights,
            model_kwargs=self.model_kwargs,
            layers=self.layers,
            seed=self.seed,
        )

    def validate(self) -> None:
        """Refuse option values that can never be valid (a usage error)."""
        check_choice("--views", self.views, VIEWS)
        check_choice("--dtype", self.dtype, FEATURE_DTYPES)
        if self.image_size <= 0:
            raise OptionError(f"--image-size {self.image_size} must be positive (a multiple of the patch size)")
        self.encoder_spec()
        check_at_least("--batch-size", self.batch_size, 1)
        check_at_least("--shard-size", self.shard_size, 1)
        check_at_least("--workers", self.workers, 0)
        if self.tail_tokens is not None:
            check_at_least("--tail-tokens", self.tail_tokens, 1)
        if self.writers is not None:
            check_at_least("writers", self.writers, 1)
            if self.writers > 1 and backend_kind(self.out) == "hdf5":
                raise OptionError(f"{self.out}: an HDF5 store is written by one thread; use a .zarr store for more")
        backend_kind(self.out)

    def writer_threads(self) -> int:
        if self.writers is not None:
            return self.writers
        return 1 if backend_kind(self.out) == "hdf5" else min(4, os.cpu_count() or 1)
