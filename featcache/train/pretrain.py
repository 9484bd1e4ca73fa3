"""Self-supervised denoising pretraining of an encoder (the study's VE + RD), as docs/design.md describes.

The encoder and the `ReconstructionDecoder` are trained end to end to reconstruct the clean image
from the image plus Gaussian noise (clamped to [0, 1]) with MSE and Adam; the epoch with the lowest
validation loss is kept. Unlike the study, the validation noise is fixed by the seed (the same
noise for every image in every epoch), so validation losses compare across epochs.

The result is a featcache encoder checkpoint (``ENCODER_CHECKPOINT_FORMAT``) that
``build_encoder(arch, PATH)`` loads, recording the weights it started from under ``"init"``,
plus two figures and the loss history beside it.

A run killed part way resumes when started again with the same configuration and data: the
resume state ``<stem>.resume.pt`` beside the checkpoint (see `resume_path`) holds everything the
next epoch needs, random generators included, so the outputs equal an uninterrupted run's on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader

from featcache import __version__
from featcache.core.context import Context
from featcache.core.errors import FeatcacheError, OptionError, check_at_least, check_choice
from featcache.core.io import ensure_writable_dir, torch_save, write_json
from featcache.core.progress import epoch_row, progress_bar
from featcache.core.runtime import autocast, err_console, seeded
from featcache.data.layouts import Sample, SampleIndex, SplitConfig, find_samples
from featcache.data.loading import SampleDataset
from featcache.data.workers import worker_batches
from featcache.models.decoders import ReconstructionDecoder, group_state
from featcache.models.record import ENCODER_CHECKPOINT_FORMAT, WeightsSource, encoder_config, normalisation
from featcache.models.spec import AnyEncoder, EncoderSpec
from featcache.models.vit import ARCHITECTURES
from featcache.models.weights import weights_sha256
from featcache.results.figures import plot_loss_curve, save_figure
from featcache.train.loop import LoopResult, run_epochs
from featcache.train.resume import Checkpointer
from featcache.train.run_lock import locks_out
from featcache.train.tracking import track_checkpoint

#: Validation images shown in the reconstruction figure.
FIGURE_IMAGES = 4
# Independent random streams of one run, derived from (seed, stream).
_ORDER_STREAM, _TRAIN_NOISE_STREAM, _VAL_NOISE_STREAM = 0, 1, 2
# Options that do not change the results: a resume state written under other values still applies.
_RESUME_IGNORES = ("workers",)


@dataclass
class PretrainConfig:
    """Everything ``featcache pretrain`` takes; defaults are the study's (docs/design.md).

    ``init``: ``imagenet``, ``random`` (torchvision's initialisation under ``seed``) or the path of
    a torchvision ViT state dict or a featcache encoder checkpoint. ``out`` is the checkpoint path;
    the figures and history are written beside it. ``lr`` is Adam's learning rate, ``noise_std``
    the standard deviation of the added noise in units of the [0, 1] pixel range, ``image_size``
    the square training resolution in pixels (a multiple of the patch size).
    """

    data: Path
    out: Path
    arch: str = "vit_b_16"
    init: str = "imagenet"
    seed: int = 0
    epochs: int = 32
    batch_size: int = 40
    lr: float = 2e-5
    noise_std: float = 0.1
    image_size: int = 224
    workers: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    init_weights: str | None = None  # with init timm:NAME: None (timm's pretrained weights), random or a file
    model_kwargs: dict = field(default_factory=dict)  # with init timm:NAME: timm.create_model options

    def validate(self) -> None:
        """Raise a one-line FeatcacheError naming the first out-of-range option."""
        check_choice("--arch", self.arch, ARCHITECTURES)
        spec = EncoderSpec.parse(self.init, arch=self.arch, weights=self.init_weights, model_kwargs=self.model_kwargs)
        if not spec.is_timm and spec.weights_file is not None and not spec.weights_file.is_file():
            raise FeatcacheError(f"--init {self.init}: no such file; pass imagenet, random or a weights file")
        check_at_least("--epochs", self.epochs, 1)
        check_at_least("--batch-size", self.batch_size, 1)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise OptionError(f"--lr {self.lr} must be a positive number")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise OptionError(f"--noise-std {self.noise_std} must be 0 or more (pixel range is [0, 1])")
        patch = 1 if spec.is_timm else ARCHITECTURES[self.arch].patch_size  # a timm model's: once it is built
        if self.image_size <= 0 or self.image_size % patch:
            raise OptionError(f"--image-size {self.image_size} must be a positive multiple of {patch} (the patch size)")
        check_at_least("--workers", self.workers, 0)
        check_at_least("--seed", self.seed, 0)

    def to_dict(self) -> dict:
        """JSON-able form (paths as strings, the split config as a dict)."""
        return {**dataclasses.asdict(self), "data": str(self.data), "out": str(self.out)}


@dataclass
class PretrainReport:
    """What `pretrain` wrote and how it went.

    ``best_val_loss`` is the per-pixel MSE (pixel range [0, 1]) of the kept epoch (1-based
    ``best_epoch``); ``seconds`` the synchronised time of the training steps, ``total_seconds``
    that plus validation (neither counts loading, figures or checkpoint writes).
    """

    out: Path
    best_epoch: int
    best_val_loss: float
    seconds: float
    total_seconds: float
    history: Path
    figures: list[Path]


def resume_path(out: Path) -> Path:
    """The resume state of a run writing ``out``: ``<stem>.resume.pt`` beside it (``encoder.pt`` ->
    ``encoder.resume.pt``)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.pt")


def _generator(seed: int, stream: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` for one of a run's random streams, independent across (seed, stream)."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1)[0]
    return torch.Generator(device=device).manual_seed(int(state))


def load_images(samples: list[Sample], size: int, batch_size: int, *, workers: int) -> torch.Tensor:
    """The samples' images resized to ``size`` x ``size``: uint8 ``[n, 3, size, size]`` (0..255), CPU."""
    loader = DataLoader(SampleDataset(samples, size), batch_size=batch_size, num_workers=workers, shuffle=False)
    return torch.cat([batch["image"] for batch in worker_batches(loader)])


def add_noise(clean: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``clean`` float ``[B, 3, H, W]`` in [0, 1] plus N(0, std^2) noise, clamped to [0, 1]."""
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return (clean + std * noise).clamp_(0, 1)


def noisy_batches(
    images: torch.Tensor, batch_size: int, std: float, *, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(clean, noisy) float ``[b, 3, S, S]`` pairs over uint8 ``images`` ``[m, 3, S, S]``, in order.

    The noise comes from a generator seeded afresh from ``seed`` on every call, so each image
    gets the same noise on every call (the fixed validation noise).
    """
    generator = _generator(seed, _VAL_NOISE_STREAM, images.device)
    for start in range(0, len(images), batch_size):
        clean = images[start : start + batch_size].float().div_(255)
        yield clean, add_noise(clean, std, generator)


@torch.no_grad()
def validation_loss(
    encoder: AnyEncoder, decoder: nn.Module, images: torch.Tensor, *, batch_size: int, std: float, seed: int
) -> torch.Tensor:
    """Per-pixel MSE (a 0-dim device tensor) of the reconstructions of uint8 ``images`` ``[m, 3, S, S]``.

    Encoder and decoder are put in eval mode; the noise is the fixed noise of `noisy_batches`.
    """
    encoder.eval()
    decoder.eval()
    total = torch.zeros((), device=images.device)
    for clean, noisy in noisy_batches(images, batch_size, std, seed=seed):
        with autocast(images.device):
            recon = decoder(encoder(noisy))
        total += F.mse_loss(recon.float(), clean, reduction="sum")
    return total / images.numel()


@torch.no_grad()
def _reconstruction_figure(
    encoder: AnyEncoder, decoder: nn.Module, images: torch.Tensor, *, ids: list[str], cfg: PretrainConfig, path: Path
) -> None:
    """A row per validation image (the first `FIGURE_IMAGES`): input, noisy input (the fixed
    validation noise), reconstruction with its per-pixel MSE."""
    encoder.eval()
    decoder.eval()
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for clean, noisy in noisy_batches(images, cfg.batch_size, cfg.noise_std, seed=cfg.seed):
        with autocast(images.device):
            recon = decoder(encoder(noisy)).float()
        rows += zip(clean.cpu(), noisy.cpu(), recon.clamp(0, 1).cpu(), strict=True)
        if len(rows) >= FIGURE_IMAGES:
            break
    rows = rows[:FIGURE_IMAGES]
    fig = Figure(figsize=(7.5, 2.6 * len(rows)))
    axes = np.array(fig.subplots(len(rows), 3, squeeze=False))
    for r, (clean, noisy, recon) in enumerate(rows):
        mse = float(F.mse_loss(recon, clean))
        panels = (
            (clean, "input"),
            (noisy, f"noisy (σ = {cfg.noise_std:g})"),
            (recon, f"reconstruction (MSE {mse:.4f})"),
        )
        for ax, (image, title) in zip(axes[r], panels, strict=True):
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(ids[r], fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


class _DenoisingTask:
    """The encoder and the reconstruction decoder, trained together as the one run of `run_epochs`.

    Batch order comes from a CPU generator and the training noise from one on the device, both
    derived from the seed; their states travel in the resume state.
    """

    runs = 1

    def __init__(
        self,
        encoder: AnyEncoder,
        decoder: nn.Module,
        train_images: torch.Tensor,
        *,
        val_images: torch.Tensor,
        cfg: PretrainConfig,
        device: torch.device,
        resume_file: Path,
    ) -> None:
        self.encoder, self.decoder, self.cfg, self.device = encoder, decoder, cfg, device
        self.train_images, self.val_images, self.resume_file = train_images, val_images, resume_file
        self.optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=cfg.lr)
        self.order_gen = _generator(cfg.seed, _ORDER_STREAM, torch.device("cpu"))
        self.noise_gen = _generator(cfg.seed, _TRAIN_NOISE_STREAM, device)

    def train_epoch(self) -> torch.Tensor:
        self.encoder.train()
        self.decoder.train()
        n, batch = len(self.train_images), self.cfg.batch_size
        order = torch.randperm(n, generator=self.order_gen).to(self.device)
        epoch_loss = torch.zeros((), device=self.device)
        for start in range(0, n, batch):
            clean = self.train_images[order[start : start + batch]].float().div_(255)  # [b, 3, S, S]
            noisy = add_noise(clean, self.cfg.noise_std, self.noise_gen)
            with autocast(self.device):
                recon = self.decoder(self.encoder(noisy))
            loss = F.mse_loss(recon.float(), clean)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            epoch_loss += loss.detach() * len(clean)
        return (epoch_loss / n).reshape(1)

    def validate(self) -> torch.Tensor:
        cfg = self.cfg
        return validation_loss(
            self.encoder, self.decoder, self.val_images, batch_size=cfg.batch_size, std=cfg.noise_std, seed=cfg.seed
        ).reshape(1)

    def snapshot(self, runs: list[int]) -> list[dict]:
        return [
            {
                "encoder": group_state(self.encoder.state_dict(), 0, 1),
                "decoder": group_state(self.decoder.state_dict(), 0, 1),
            }
        ]

    def state_dict(self) -> dict:
        return {
            "device_type": self.device.type,
            "encoder": self.encoder.state_dict(),
            "decoder": self.decoder.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "order_generator": self.order_gen.get_state(),
            "noise_generator": self.noise_gen.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["device_type"] != self.device.type:  # CPU and CUDA generators have different states
            raise FeatcacheError(
                f"{self.resume_file} was written on {state['device_type']}; resume with "
                f"--device {state['device_type']}, or delete it to start again on {self.device.type}"
            )
        self.encoder.load_state_dict(state["encoder"])
        self.decoder.load_state_dict(state["decoder"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.order_gen.set_state(state["order_generator"])
        self.noise_gen.set_state(state["noise_generator"])

    def divergence(self, epoch: int, runs: list[int]) -> FeatcacheError:
        return FeatcacheError(
            f"pretraining diverged: the loss is not finite at epoch {epoch}; lower --lr (now {self.cfg.lr:g})"
        )


@locks_out("the encoder checkpoint")
def pretrain(cfg: PretrainConfig, *, ctx: Context | None = None) -> PretrainReport:
    """Denoising pretraining of ``cfg.arch`` from ``cfg.init``; writes the best epoch's checkpoint.

    Images of the train and val splits are decoded and resized once (uint8 on the device). Each
    epoch visits the training images in a seeded random order in batches of ``batch_size``; a
    step adds seeded noise, reconstructs with encoder + decoder (bf16 autocast on CUDA) and takes
    an Adam step on the MSE. Writes ``cfg.out`` (atomically), ``<stem>_history.json``,
    ``<stem>_loss.png`` and ``<stem>_reconstructions.png`` beside it.

    After an epoch, at most every ``ctx.checkpoint_seconds`` and after the last one, the resume state
    (`resume_path`) is written atomically, outside the timed region; a run whose resume state
    exists continues after its epoch if configuration (but for ``workers``) and data fingerprint
    match, and is refused otherwise. The resume state is deleted once all outputs are written.
    """
    cfg.validate()
    ensure_writable_dir(Path(cfg.out).parent, value=cfg.out)
    ctx = ctx or Context.resolve()
    data = _load(cfg, ctx.device)
    identity = {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_IGNORES},
        "fingerprint": data.index.fingerprint(),
    }
    checkpointer = Checkpointer(resume_path(cfg.out), identity, ctx.checkpoint_seconds)
    encoder = EncoderSpec.parse(
        cfg.init, arch=cfg.arch, weights=cfg.init_weights, model_kwargs=cfg.model_kwargs, seed=cfg.seed
    ).build()
    if cfg.image_size % encoder.patch_size:
        raise OptionError(f"--image-size {cfg.image_size} must be a multiple of {encoder.patch_size} (the patch size)")
    init = replace(encoder.source, seed=cfg.seed, weights_sha256=weights_sha256(encoder))
    with seeded(cfg.seed):
        decoder = ReconstructionDecoder(encoder.width, encoder.patch_size)
    encoder.to(ctx.device)
    decoder.to(ctx.device)
    task = _DenoisingTask(
        encoder,
        decoder,
        data.train_images,
        val_images=data.val_images,
        cfg=cfg,
        device=ctx.device,
        resume_file=checkpointer.path,
    )
    # A finished run trained again (no resume state beside its checkpoint) is a new tracked run.
    resume = checkpointer.path.exists() or not Path(cfg.out).exists()
    params = {
        **cfg.to_dict(),
        "encoder": {"arch": encoder.arch, "config": encoder_config(encoder), "source": init.to_json()},
    }
    params.update(dataset_fingerprint=identity["fingerprint"], featcache_version=__version__)
    tracking = track_checkpoint(ctx, checkpoint=Path(cfg.out), command="pretrain", params=params, resume=resume)
    with tracking, progress_bar("epochs", disable=not ctx.progress) as bar:
        result = run_epochs(
            task,
            epochs=cfg.epochs,
            device=ctx.device,
            checkpointer=checkpointer,
            progress=tracking.epochs(["pretrain"], epoch_row(bar, "pretrain", cfg.epochs)),
        )
    best = result.bests[0]
    encoder.load_state_dict(best.weights["encoder"])
    decoder.load_state_dict(best.weights["decoder"])
    report = _write_outputs(cfg, encoder=encoder, decoder=decoder, init=init, result=result, data=data, ctx=ctx)
    checkpointer.done()
    metrics = {"best_epoch": best.epoch, "best_val_loss": best.val_loss, "train_seconds": result.train_seconds}
    files = [report.history, *report.figures, tracking.config_file]
    tracking.finish("pretrain", {**metrics, "total_seconds": result.total_seconds}, files)
    tracking.end()
    return report


@dataclass
class _Data:
    """The dataset's index and its training and validation images, uint8 ``[n, 3, S, S]`` on the device."""

    index: SampleIndex
    train_images: torch.Tensor
    val_images: torch.Tensor
    val_ids: list[str]


def _load(cfg: PretrainConfig, device: torch.device) -> _Data:
    index = find_samples(cfg.data, cfg.split)
    if index.split_note:
        err_console.print(f"{cfg.data}: {index.split_note}")
    train_samples, val_samples = index.split("train"), index.split("val")
    if not val_samples:
        raise FeatcacheError(
            f"{cfg.data}: no validation images; add a validation folder or raise --val-fraction above 0"
        )
    return _Data(
        index,
        load_images(train_samples, cfg.image_size, cfg.batch_size, workers=cfg.workers).to(device),
        load_images(val_samples, cfg.image_size, cfg.batch_size, workers=cfg.workers).to(device),
        [s.id for s in val_samples],
    )


def _write_outputs(
    cfg: PretrainConfig,
    *,
    encoder: AnyEncoder,
    decoder: nn.Module,
    init: WeightsSource,
    result: LoopResult,
    data: _Data,
    ctx: Context,
) -> PretrainReport:
    """The checkpoint (the kept epoch's weights), its history and its two figures, each written atomically."""
    best, history = result.bests[0], result.histories[0]
    checkpoint = {
        "format": ENCODER_CHECKPOINT_FORMAT,
        "arch": encoder.arch,
        "config": encoder_config(encoder),
        "state_dict": best.weights["encoder"],
        "decoder_state_dict": best.weights["decoder"],
        "init": init.to_json(),
        "normalisation": normalisation(encoder),
        "history": history,
        "best_epoch": best.epoch,
        "best_val_loss": best.val_loss,
        "config_pretrain": cfg.to_dict(),
        "dataset": data.index.to_dict(),
        "device": str(ctx.device),
        "seconds": result.train_seconds,
        "total_seconds": result.total_seconds,
    }
    out = Path(cfg.out)
    torch_save(checkpoint, out)
    history_path = out.with_name(f"{out.stem}_history.json")
    kept = ("history", "best_epoch", "best_val_loss", "seconds", "total_seconds", "device", "init", "config_pretrain")
    write_json(history_path, {key: checkpoint[key] for key in kept})
    loss_png = out.with_name(f"{out.stem}_loss.png")
    recon_png = out.with_name(f"{out.stem}_reconstructions.png")
    plot_loss_curve(
        history["train_loss"],
        history["val_loss"],
        best_epoch=best.epoch,
        path=loss_png,
        title=f"denoising pretraining, {encoder.arch} (noise σ = {cfg.noise_std:g})",
        ylabel="reconstruction MSE",
    )
    _reconstruction_figure(encoder, decoder, data.val_images, ids=data.val_ids, cfg=cfg, path=recon_png)
    return PretrainReport(
        out, best.epoch, best.val_loss, result.train_seconds, result.total_seconds, history_path, [recon_png, loss_png]
    )
