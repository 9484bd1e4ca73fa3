"""Seconds per training sample for the E, F and C modes, and the ratios E/C and F/C, per batch size.

Each mode runs featcache's own training loop (`featcache.train.decoder_fit.fit`) on the same random 224 px
images: E trains encoder + decoder, F runs the frozen encoder at every step, C reads features
computed beforehand (as from the store). One `fit` of 3 epochs per (arch, batch, mode), each
epoch ``--steps`` batches; only the last epoch's training seconds count
(``FitResult.epoch_train_seconds``, device synchronised): the first is a warm-up and the loop
captures its CUDA graphs after it, so the last is the steady state. On CUDA, C runs a second time
without CUDA graphs ("C eager"): the graphs' own speed-up, measured in the same call.

    python benchmarks/bench_step.py                        # vit_b_16 and vit_ti_16 on the default device
    python benchmarks/bench_step.py --archs vit_ti_16 --batch-size 5,10,50 --steps 3 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from featcache.cli.parsing import parse_list
from featcache.core.context import Context
from featcache.core.runtime import resolve_device
from featcache.models.spec import build_encoder
from featcache.train.config import TrainConfig
from featcache.train.decoder_fit import RunInputs, fit
from featcache.train.modes import MODES
from featcache.train.protocol import Plan
from featcache.train.run import seeded_decoder
from featcache.train.sources import EncoderFeatures, StoreFeatures


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


EPOCHS = 3  # the first a warm-up, CUDA graphs captured after it; the last one counted


def seconds_per_sample(
    mode: str,
    template: nn.Module,
    *,
    batch: int,
    steps: int,
    size: int,
    device: torch.device,
    graphs: bool = True,
) -> float:
    """Training seconds per sample of the last of `EPOCHS` epochs, each ``steps`` batches of ``batch`` images, with
    a copy of the encoder ``template``; ``graphs``: CUDA graphs (on CUDA only)."""
    n = batch * steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    masks = (images[:, 0] > 127).to(torch.uint8)
    encoder = copy.deepcopy(template).to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    cfg = TrainConfig(size=n, epochs=EPOCHS, batch_size=batch, val_size=1, augment="exact")
    plan = Plan(size=n, epochs=EPOCHS, batch_size=batch, val_size=1)
    if MODES[mode].reads_store:
        with torch.no_grad():
            feats = torch.cat([encoder(images[i : i + batch].float() / 255) for i in range(0, n, batch)])
        source = StoreFeatures(feats[:, None].repeat(1, 4, 1, 1, 1), "exact")
        val = StoreFeatures(feats[:1, None], "none")
    else:
        source = EncoderFeatures(encoder, images, trainable=MODES[mode].trainable)
        val = EncoderFeatures(encoder, images[:1], trainable=False)
    decoder = seeded_decoder(cfg, encoder.width).to(device)
    run = RunInputs(0, source, masks, val, masks[:1])
    ctx = Context(device=device, cuda_graphs=graphs and device.type == "cuda", progress=False)
    return fit(decoder, run, plan=plan, cfg=cfg, ctx=ctx).epoch_train_seconds[-1] / n


def step_row(arch: str, template: nn.Module, batch: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds per sample of E, F and C for one (arch, batch), and their ratios."""
    shape = dict(batch=batch, steps=args.steps, size=args.image_size, device=device)
    t = {m: seconds_per_sample(m, template, **shape) for m in ("E", "F", "C")}
    row = {"arch": arch, "batch_size": batch, **t}
    row.update({"E/C": t["E"] / t["C"], "F/C": t["F"] / t["C"], "E/F": t["E"] / t["F"]})
    if device.type == "cuda":
        row["C eager"] = seconds_per_sample("C", template, graphs=False, **shape)
        row["C eager/C"] = row["C eager"] / t["C"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="vit_b_16,vit_ti_16")
    parser.add_argument(
        "--batch-size", default="10", help="comma-separated; the study's batches are 5 (size 10), 10 and 50 (2000)"
    )
    parser.add_argument("--steps", type=int, default=2, help="batches in each epoch, the counted last one too")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    batches = parse_list(args.batch_size, "--batch-size")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    console = Console()
    console.print(
        f"bench_step: {machine(device)}; torch {torch.__version__}; batches {','.join(map(str, batches))}, "
        f"{EPOCHS} epochs of {args.steps} steps, the last counted; {args.image_size} px; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    table = Table(title="training seconds per sample")
    eager = ("C eager", "C eager/C") if device.type == "cuda" else ()
    for col in ("arch", "batch", "E", "F", "C", "E/C", "F/C", "E/F", *eager):
        table.add_column(col, justify="right")
    rows = []
    for arch in args.archs.split(","):
        template = build_encoder(arch, "random")  # copied for every run: one random initialisation per arch
        for batch in batches:
            row = step_row(arch, template, batch, args, device)
            rows.append(row)
            table.add_row(
                arch,
                str(batch),
                *(f"{row[m]:.4f}" for m in ("E", "F", "C")),
                *(f"{row[r]:.1f}x" for r in ("E/C", "F/C", "E/F")),
                *((f"{row['C eager']:.4f}", f"{row['C eager/C']:.1f}x") if eager else ()),
            )
    console.print(table)
    if args.json:
        figures = {"machine": machine(device), "steps": args.steps, "epochs": EPOCHS, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
