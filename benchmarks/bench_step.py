"""Seconds per training sample for the E, F and C modes, and the ratios E/C and F/C.

Each mode runs featcache's own training loop (`featcache.loop.fit`) for a few epochs on the same
random 224 px images: E trains encoder + decoder, F runs the frozen encoder at every step, C reads
features computed beforehand (as from the store). Only ``train_seconds`` is used (training steps,
device synchronised); the first epoch is a warm-up and is not counted.

    python benchmarks/bench_step.py                        # vit_b_16 and vit_ti_16 on the default device
    python benchmarks/bench_step.py --archs vit_ti_16 --batch-size 10 --steps 3 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from featcache.loop import RunInputs, fit
from featcache.models import build_encoder
from featcache.modes import MODES
from featcache.protocol import Plan
from featcache.runtime import resolve_device
from featcache.sources import EncoderFeatures, StoreFeatures
from featcache.train import TrainConfig, seeded_decoder


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{model}, {torch.get_num_threads()} threads"


def seconds_per_sample(mode: str, arch: str, batch: int, steps: int, size: int, device: torch.device) -> float:
    """Mean training seconds per sample over ``steps`` batches of one counted epoch (after a warm-up epoch)."""
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    masks = (images[:, 0] > 127).to(torch.uint8)
    encoder = build_encoder(arch, "random").to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    cfg = TrainConfig(size=n, epochs=1, batch_size=batch, val_size=1, augment="exact")
    plan = Plan(size=n, epochs=1, batch_size=batch, val_size=1)
    if MODES[mode].reads_store:
        with torch.no_grad():
            feats = torch.stack([encoder(images[i : i + 1].float() / 255)[0] for i in range(n)])
        source = StoreFeatures(feats[:, None].repeat(1, 4, 1, 1, 1), "exact")
        val = StoreFeatures(feats[:1, None], "none")
    else:
        source = EncoderFeatures(encoder, images, trainable=MODES[mode].trainable)
        val = EncoderFeatures(encoder, images[:1], trainable=False)
    decoder = seeded_decoder(cfg, encoder.width).to(device)
    run = RunInputs(0, source, masks, val, masks[:1])
    fit(decoder, run, plan, cfg, device)  # warm-up: allocations, kernel choice
    return fit(decoder, run, plan, cfg, device).train_seconds / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="vit_b_16,vit_ti_16")
    parser.add_argument("--batch-size", type=int, default=10, help="the study's batch for 20-160 images")
    parser.add_argument("--steps", type=int, default=2, help="batches in the counted epoch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    console = Console()
    console.print(
        f"bench_step: {machine(device)}; torch {torch.__version__}; batch {args.batch_size}, "
        f"{args.steps} steps counted after a warm-up epoch, {args.image_size} px; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    table = Table(title="training seconds per sample")
    for col in ("arch", "E", "F", "C", "E/C", "F/C", "E/F"):
        table.add_column(col, justify="right")
    rows = []
    for arch in args.archs.split(","):
        t = {
            m: seconds_per_sample(m, arch, args.batch_size, args.steps, args.image_size, device)
            for m in ("E", "F", "C")
        }
        rows.append({"arch": arch, **t, "E/C": t["E"] / t["C"], "F/C": t["F"] / t["C"], "E/F": t["E"] / t["F"]})
        table.add_row(
            arch,
            *(f"{t[m]:.4f}" for m in ("E", "F", "C")),
            f"{t['E'] / t['C']:.1f}x",
            f"{t['F'] / t['C']:.1f}x",
            f"{t['E'] / t['F']:.1f}x",
        )
    console.print(table)
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(device), "batch_size": args.batch_size, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
