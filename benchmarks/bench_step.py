"""Seconds per training sample and peak training memory of the modes E, F, C, Tk and Pk, and their ratios, per batch
size.

Each mode runs featcache's own training loop (`featcache.train.decoder_fit.fit`) on the same random 224 px
images: E trains encoder + decoder, F runs the frozen encoder at every step, C reads features computed
beforehand (as from the store), Tk trains the encoder's last k blocks and final norm from the tokens entering
them (computed beforehand, as the store's ``tokens``), Pk the same network from the images (the blocks below
frozen). One `fit` of 3 epochs per (arch, batch, mode), each epoch ``--steps`` batches; only the last epoch's
training seconds count (``FitResult.epoch_train_seconds``, device synchronised): the first is a warm-up and the
loop captures its CUDA graphs after it, so the last is the steady state. On CUDA, C runs a second time without
CUDA graphs ("C eager"): the graphs' own speed-up, measured in the same call.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` over the fit (inputs, network, optimiser, activations), the
rows in one process; on the CPU each row runs in a process of its own, whose peak resident set while training
(Linux ``VmHWM``, reset once the inputs are built) less its size after the imports is the row's training memory.
``--profile MODE`` prints the top operators of that mode's counted epoch (run eagerly): what bounds it.

    python benchmarks/bench_step.py                        # vit_b_16 and vit_ti_16 on the default device
    python benchmarks/bench_step.py --archs vit_ti_16 --batch-size 5,10,50 --steps 3 --device cpu --modes E,F,C
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from featcache.cli.parsing import parse_list
from featcache.core.context import Context
from featcache.core.runtime import resolve_device
from featcache.models.spec import build_encoder
from featcache.models.tail import PartlyFrozenEncoder, TailEncoder, tail_tokens
from featcache.train.config import TrainConfig
from featcache.train.decoder_fit import RunInputs, fit
from featcache.train.modes import mode_of, parse_mode
from featcache.train.protocol import Plan
from featcache.train.run import seeded_decoder
from featcache.train.sources import EncoderFeatures, StoreFeatures
from featcache.train.tail_run import TokenFeatures

EPOCHS = 3  # the first a warm-up, CUDA graphs captured after it; the last one counted
#: Issue 22's goals on the CPU at ViT-B/16, batch 10: (label, slower mode, faster mode, least ratio); T2's training
#: memory at most 35 % of E's.
TIME_GOALS = (("E/T1", "E", "T1", 6.0), ("P2/T2", "P2", "T2", 2.0))
MEMORY_GOAL = ("T2", "E", 0.35)


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


def status_mib(field: str) -> float:
    """``VmHWM`` (peak resident set since the last reset) or ``VmRSS`` of this process, MiB (Linux)."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def _sources(mode: str, encoder, images: torch.Tensor, batch: int) -> tuple:
    """The mode's training and validation feature sources on ``images`` (uint8 ``[n, 3, S, S]``)."""
    spec, k = parse_mode(mode)
    n = len(images)
    if spec.source == "encoder" and not k:
        return EncoderFeatures(encoder, images, trainable=spec.trainable), EncoderFeatures(encoder, images[:1], False)
    if spec.source == "encoder":
        net = PartlyFrozenEncoder(encoder, train_blocks=k)
        return EncoderFeatures(net, images, True), EncoderFeatures(net, images[:1], False)
    with torch.no_grad():
        if spec.source == "store":
            feats = torch.cat([encoder(images[i : i + batch].float() / 255) for i in range(0, n, batch)])
            return StoreFeatures(feats[:, None].repeat(1, 4, 1, 1, 1), "exact"), StoreFeatures(feats[:1, None], "none")
        tokens = torch.cat([tail_tokens(encoder, images[i : i + batch].float() / 255, k) for i in range(0, n, batch)])
    net = TailEncoder(encoder, tail=k, train_blocks=k)
    grid = (images.shape[-2] // encoder.patch_size, images.shape[-1] // encoder.patch_size)
    train = TokenFeatures(net, tokens[:, None].repeat(1, 4, 1, 1), augment="exact", grid=grid)
    return train, TokenFeatures(net, tokens[:1, None], augment="none", grid=grid)


def measure(mode: str, arch: str, args: argparse.Namespace, *, graphs: bool = True) -> dict:
    """One (arch, batch, mode) row in this process: training seconds per sample of the last of `EPOCHS` epochs,
    trainable parameters and peak training memory, MiB: what the fit holds at its peak (inputs, networks,
    gradients, optimiser state, activations; the encoder a Tk or C row's inputs came from let go first) as CUDA's
    max allocated, or on the CPU as the peak resident set above the process's size after its imports.
    ``args.profile`` == ``mode``: the counted epoch's top operators too."""
    device, batch = resolve_device(args.device), args.row_batch
    imports_mib = status_mib("VmRSS") if device.type != "cuda" else 0.0
    n = batch * args.steps
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=gen)
    images, masks = images.to(device), (images[:, 0] > 127).to(torch.uint8).to(device)
    encoder = build_encoder(arch, "random").to(device)
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    source, val = _sources(mode, encoder, images, batch)
    cfg = TrainConfig(size=n, epochs=EPOCHS, batch_size=batch, val_size=1, augment="exact")
    plan = Plan(size=n, epochs=EPOCHS, batch_size=batch, val_size=1)
    decoder = seeded_decoder(cfg, encoder.width).to(device)
    del encoder  # held on by the sources that run it (E, F, Pk), let go by those that do not (C, Tk)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    profiler = torch.profiler.profile() if args.profile == mode else None
    ctx = Context(device=device, cuda_graphs=graphs and device.type == "cuda" and profiler is None, progress=False)

    def last_epoch(end) -> None:  # the loop's progress callback, after each epoch
        if profiler is not None and end.epoch == EPOCHS - 1:
            profiler.start()

    fitted = fit(decoder, RunInputs(0, source, masks, val, masks[:1]), plan=plan, cfg=cfg, ctx=ctx, progress=last_epoch)
    if profiler is not None:
        profiler.stop()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), file=sys.stderr)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = status_mib("VmHWM") - imports_mib
    trainable = sum(p.numel() for p in [*decoder.parameters(), *source.parameters()])
    return {"seconds": fitted.epoch_train_seconds[-1] / n, "peak_mib": peak, "trainable": trainable}


def measure_apart(mode: str, arch: str, args: argparse.Namespace) -> dict:
    """`measure` in a process of its own (the CPU: a row's peak resident set is its own)."""
    cmd = [sys.executable, __file__, "--worker", mode, "--archs", arch, "--batch-size", str(args.row_batch)]
    cmd += ["--steps", str(args.steps), "--image-size", str(args.image_size), "--device", args.device]
    cmd += ["--profile", args.profile] if args.profile else []
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"bench_step row {arch} {mode} failed:\n{done.stderr[-2000:]}")
    if args.profile == mode:
        print(done.stderr, file=sys.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_row(arch: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds per sample, trainable parameters and peak memory of every mode for one (arch, batch), and the
    ratios."""
    args.row_batch = batch
    run = measure if device.type == "cuda" else measure_apart
    measured = {m: run(m, arch, args) for m in args.mode_list}
    t = {m: v["seconds"] for m, v in measured.items()}
    row = {"arch": arch, "batch_size": batch, **t}
    for slow, fast in (("E", "C"), ("F", "C"), ("E", "F"), ("E", "T1"), ("P2", "T2"), ("T2", "C")):
        if slow in t and fast in t:
            row[f"{slow}/{fast}"] = t[slow] / t[fast]
    row["peak_mib"] = {m: v["peak_mib"] for m, v in measured.items()}
    row["trainable"] = {m: v["trainable"] for m, v in measured.items()}
    if device.type == "cuda" and "C" in t:
        row["C eager"] = measure("C", arch, args, graphs=False)["seconds"]
        row["C eager/C"] = row["C eager"] / t["C"]
    return row


def goals_table(rows: list[dict]) -> Table:
    """Issue 22's goals per (arch, batch) row that has the modes they compare."""
    table = Table(title="goals (issue 22: CPU, vit_b_16, batch 10)")
    for col in ("arch", "batch", "ratio", "measured", "goal", "met"):
        table.add_column(col)
    for row in rows:
        for label, *_, least in TIME_GOALS:
            if label in row:
                met = "yes" if row[label] >= least else "no"
                table.add_row(row["arch"], str(row["batch_size"]), label, f"{row[label]:.2f}x", f">= {least:g}x", met)
        mode, of, share = MEMORY_GOAL
        peaks = row["peak_mib"]
        if mode in peaks and of in peaks:
            ratio = peaks[mode] / peaks[of]
            met = "yes" if ratio <= share else "no"
            table.add_row(
                row["arch"], str(row["batch_size"]), f"{mode}/{of} memory", f"{ratio:.0%}", f"<= {share:.0%}", met
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="vit_b_16,vit_ti_16")
    parser.add_argument(
        "--batch-size", default="10", help="comma-separated; the study's batches are 5 (size 10), 10 and 50 (2000)"
    )
    parser.add_argument("--steps", type=int, default=2, help="batches in each epoch, the counted last one too")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--modes", default="E,F,C,T1,T2,P2", help="any of E, Es, F, FI, C, Tk, Pk (k blocks trained)")
    parser.add_argument("--profile", help="a mode whose counted epoch is profiled (eagerly): its top operators")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one row in this process (the CPU's memory is measured per process)
        args.row_batch = int(args.batch_size)
        print(json.dumps(measure(args.worker, args.archs, args)))
        return
    args.mode_list = parse_list(args.modes, "--modes", str)
    for mode in args.mode_list:
        mode_of(mode)
    batches = parse_list(args.batch_size, "--batch-size")
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    console = Console()
    console.print(
        f"bench_step: {machine(device)}; torch {torch.__version__}; batches {','.join(map(str, batches))}, "
        f"{EPOCHS} epochs of {args.steps} steps, the last counted; {args.image_size} px; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; load average {os.getloadavg()[0]:.2f}"
    )
    ratios = [r for r in ("E/C", "F/C", "E/F", "E/T1", "P2/T2", "T2/C") if set(r.split("/")) <= set(args.mode_list)]
    eager = ("C eager", "C eager/C") if device.type == "cuda" and "C" in args.mode_list else ()
    table = Table(title="training seconds per sample")
    for col in ("arch", "batch", *args.mode_list, *ratios, *eager):
        table.add_column(col, justify="right")
    memory = Table(title="peak training memory, MiB (trainable parameters)")
    for col in ("arch", "batch", *args.mode_list):
        memory.add_column(col, justify="right")
    rows = []
    for arch in args.archs.split(","):
        for batch in batches:
            row = step_row(arch, batch, args, device)
            rows.append(row)
            table.add_row(
                arch,
                str(batch),
                *(f"{row[m]:.4f}" for m in args.mode_list),
                *(f"{row[r]:.1f}x" for r in ratios),
                *((f"{row['C eager']:.4f}", f"{row['C eager/C']:.1f}x") if eager else ()),
            )
            cells = (f"{row['peak_mib'][m]:,.0f} ({row['trainable'][m] / 1e6:.2f} M)" for m in args.mode_list)
            memory.add_row(arch, str(batch), *cells)
    console.print(table)
    console.print(memory)
    console.print(goals_table(rows))
    console.print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        figures = {"machine": machine(device), "steps": args.steps, "epochs": EPOCHS, "rows": rows}
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
