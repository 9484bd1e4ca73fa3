"""Where a grouped C-mode training epoch spends its time: the top operators of the protocol's largest size.

One `featcache.train.decoder_fit.fit_group` of ``--runs`` runs (5 seeds, as a sweep groups them) of the SD
decoder at ``--batch-size`` 50 (size 2000's batch) on random ViT-B/16-shaped features (768 x 14 x 14,
4 flip views), the way C mode trains; torch.profiler records the second of two epochs (the first
is the warm-up), run eagerly so every operator is named. Prints the top operators by device time
(CPU time on the CPU), the epoch's seconds and the decoder's achieved TFLOP/s, so that what bounds
the large sizes (convolutions, upsampling, BatchNorm, the optimiser) is measured, not guessed.

    python benchmarks/bench_profile.py                               # on the default device
    python benchmarks/bench_profile.py --device cpu --width 32 --batch-size 4 --steps 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console

from featcache.core.context import Context
from featcache.core.runtime import resolve_device
from featcache.models.decoders import build_decoder
from featcache.train.config import TrainConfig
from featcache.train.decoder_fit import RunInputs, fit_group
from featcache.train.protocol import Plan
from featcache.train.sources import StoreFeatures


def sd_macs(width: int) -> int:
    """Multiply-accumulates of one SD forward of one sample at 224 px from ``width`` feature channels: its four
    3x3 convolutions at 14, 28, 56 and 112 px and the 1x1 at 224 px (about 1.04 G at 768)."""
    return 9 * 196 * width * 256 + 9 * 784 * 256 * 128 + 9 * 3136 * 128 * 64 + 9 * 12544 * 64 * 32 + 50176 * 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs grouped into one network (a sweep's seeds)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--steps", type=int, default=8, help="batches in each epoch")
    parser.add_argument("--width", type=int, default=768, help="feature channels (ViT-B/16: 768)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    n, k = args.batch_size * args.steps, args.runs
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, 4, args.width, 14, 14, generator=gen).to(device, torch.float16)
    masks = (torch.rand(n, 224, 224, generator=gen) > 0.5).to(device, torch.uint8)
    cfg = TrainConfig(size=n, epochs=2, batch_size=args.batch_size, val_size=args.batch_size)
    plan = Plan(size=n, epochs=2, batch_size=args.batch_size, val_size=args.batch_size)
    runs = [
        RunInputs(
            seed,
            StoreFeatures(features, "exact"),
            masks,
            StoreFeatures(features[: args.batch_size, :1], "none"),
            masks[: args.batch_size],
        )
        for seed in range(k)
    ]
    decoder = build_decoder("sd", args.width, groups=k).to(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)

    def second_epoch(end) -> None:  # the loop's progress callback: after each epoch
        if end.epoch == 1:
            profiler.start()
        else:
            profiler.stop()

    eager = Context(device=device, cuda_graphs=False, progress=False)
    fit = fit_group(decoder, runs, plan=plan, cfg=cfg, ctx=eager, progress=second_epoch)[0]
    seconds = fit.epoch_train_seconds[-1]
    tflops = 3 * 2 * sd_macs(args.width) * n * k / seconds / 1e12  # forward + backward ~ 3 forwards
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    console = Console(width=200)
    console.print(
        f"bench_profile: {name}; {k} runs grouped, batch {args.batch_size}, {args.steps} steps, width {args.width}: "
        f"epoch {seconds:.3f} s, {seconds / args.steps * 1e3:.2f} ms per step, decoder {tflops:.1f} TFLOP/s achieved"
    )
    events = profiler.key_averages()
    console.print(events.table(sort_by=sort, row_limit=args.rows), markup=False, highlight=False)
    if args.json:
        top = sorted(events, key=lambda e: getattr(e, sort), reverse=True)[: args.rows]
        args.json.write_text(
            json.dumps(
                {
                    "device": name,
                    "runs": k,
                    "batch_size": args.batch_size,
                    "steps": args.steps,
                    "epoch_seconds": seconds,
                    "ms_per_step": seconds / args.steps * 1e3,
                    "tflops": tflops,
                    "top": [{"name": e.key, "self_us": getattr(e, sort), "calls": e.count} for e in top],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
