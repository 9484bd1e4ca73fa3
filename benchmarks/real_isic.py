"""The study on real ISIC images: pretrain -> extract -> C, F and E sweeps, IoU per size and mode.

    python benchmarks/real_isic.py ../shared/data/isic2017-train-256              # ~30 min, 2 CPU cores
    python benchmarks/real_isic.py isic2017 --scale gpu --out runs/real-isic      # the study's scale
    python benchmarks/real_isic.py ../shared/data/isic2017-train-256 --tail T1,T2 # also modes T1 and T2

``--scale cpu`` (a small ViT, stated): vit_mini at 64 px from random weights, 10 pretraining
epochs, sizes 160..10 x 3 seeds at 40 epochs (SGD lr 0.05). ``--scale gpu``: the study's ViT-B/16 at
224 px from ImageNet weights (put them in torchvision's cache first, see the README), 32
pretraining epochs, sizes 2000..10 x 5 seeds with the study's protocol (epochs, batch, lr 2e-4).
A dataset without validation/test folders is split 15 % / 15 % (seeded), as featcache says.
``--tail T1,T2`` adds those modes (the encoder's last blocks trained from cached tokens; the store is then
extracted with ``--tail-tokens`` the largest k). ``--encoder PATH`` skips pretraining and extracts with that
encoder instead (one pretrained by an earlier run, e.g. its ``OUT/encoder.pt``; its settings are the caller's
word: the printed settings are the preset's). ``--sizes 40,20,10 --seeds 0,1`` replace the preset's sizes and
seeds (a shorter run on a busy machine; the printed settings say which).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from featcache.core.context import Context
from featcache.demo import DemoConfig, run_demo
from featcache.results.tables import compare_table
from featcache.train.modes import train_blocks_of

SCALES = {
    "cpu": dict(
        arch="vit_mini",
        image_size=64,
        init="random",
        pretrain_epochs=10,
        pretrain_lr=1e-3,
        sizes=(160, 80, 40, 20, 10),
        seeds=(0, 1, 2),
        epochs=40,
        lr=0.05,
    ),
    "gpu": dict(
        arch="vit_b_16",
        image_size=224,
        init="imagenet",
        pretrain_epochs=32,
        pretrain_lr=2e-5,
        pretrain_batch=40,
        sizes=(2000, 160, 80, 40, 20, 10),
        seeds=(0, 1, 2, 3, 4),
        epochs=None,
        lr=2e-4,
    ),
}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--scale", choices=tuple(SCALES), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/real-isic"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tail", default="", help="Tk modes to add, e.g. T1,T2 (issue 22)")
    parser.add_argument("--encoder", type=Path, help="a pretrained encoder to use instead of pretraining")
    parser.add_argument("--sizes", type=_ints, help="replace the preset's sizes, e.g. 40,20,10")
    parser.add_argument("--seeds", type=_ints, help="replace the preset's seeds, e.g. 0,1")
    args = parser.parse_args()
    tail = tuple(m for m in args.tail.split(",") if m)
    if any(not m.startswith("T") for m in tail):
        parser.error(f"--tail {args.tail}: give modes Tk, e.g. T1,T2")
    blocks = [train_blocks_of(m) for m in tail]
    preset = {**SCALES[args.scale], **{k: v for k, v in (("sizes", args.sizes), ("seeds", args.seeds)) if v}}
    modes = ("E", "F", "C", *tail)
    cfg = DemoConfig(
        out=args.out,
        data=args.data,
        modes=modes,
        tail_tokens=max(blocks, default=None),
        encoder=args.encoder,
        **preset,
    )
    result = run_demo(cfg, ctx=Context.resolve(args.device))
    console = Console()
    console.print(compare_table(result.comparison.results))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items())
    console.print(
        f"real_isic ({args.scale}) finished in {result.seconds:.0f} s ({steps}); settings: {cfg.shortenings()}"
    )
    console.print(f"report: {result.comparison.report}")


if __name__ == "__main__":
    main()
