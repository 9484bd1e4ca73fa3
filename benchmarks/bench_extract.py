"""Where does feature extraction spend its time? Images/s (and MB/s) of its parts.

Stages, each timed with ``time.perf_counter`` (after ``torch.cuda.synchronize`` on CUDA):

1. decode + resize: a DataLoader over ``featcache.data.SampleDataset`` with ``--workers``
   workers, no encoder; the batches it yields are kept in memory for stage 2.
2. encoder alone: ``featcache.store.encode.encode_views`` on those pre-decoded uint8 batches, with
   ``--views`` (``flips`` encodes each image four times); one untimed warm-up batch first.
3. whole extract: ``featcache.store.extract.extract(ExtractConfig(...))`` into a temporary store
   (cold: it builds its own encoder and store). Two rows: the wall time of the whole call, and
   the extraction loop as timed by ``extract`` itself (without index, encoder build and store
   creation).
4. write alone: pre-made random float16 features shaped like the run's (and random images and
   masks) for as many samples as stage 3 (at least 8 blocks), written block by block through
   extract's writer (`featcache.store.writer.BlockWriter` and ``write_or_explain``: compression,
   checksums, room checks) into a new store, with 1, 2 and 4 writer threads (HDF5: 1). MB/s
   counts the uncompressed bytes of the three arrays. Like the other stages it needs no GPU, so
   the pipeline's writing side can be judged on any machine.
5. JPEG decoding, images only (no masks) resized to ``--image-size``: DataLoader workers
   (``featcache.data.load_image``, PIL with DCT-domain downscaling) against
   ``torchvision.io.decode_jpeg(..., device="cuda")`` (nvJPEG, batches of ``--batch-size``) and an
   antialiased bilinear resize on the GPU; the files are read in the main thread. Without CUDA the
   GPU row says "skipped: no CUDA". ``--full-size N`` runs it on N synthetic 3024x2016 JPEGs (the
   size of many ISIC photographs) in a temp folder, instead of the JPEGs of stages 1-2.

Every rate counts source images (not views). The ratio whole/encoder = stage 3 images/s over
stage 2 images/s: near 1 means the encoder is the bottleneck, well below 1 means decoding or
writing holds it back.

Usage (from the repository root)::

    python benchmarks/bench_extract.py                       # synthetic 64/16/16 images, varied sizes
    python benchmarks/bench_extract.py ../shared/data/isic2017-train-256 --limit 64 --extract-limit 64
    python benchmarks/bench_extract.py DATA --arch vit_ti_16 --views flips --device cuda --json out.json
    python benchmarks/bench_extract.py DATA --encoder timm:vit_base_patch14_dinov2.lvd142m --encoder-weights random
    python benchmarks/bench_extract.py --arch vit_ti_16 --views flips --full-size 8 --device cuda

``--limit N`` restricts stages 1-2 to the first N samples; ``--extract-limit N`` restricts stage 3
to the first N samples (a temporary images/ + masks/ folder of symlinks). On CPU the script sets
``torch.set_num_threads(os.cpu_count())`` before stage 2, as ``extract`` does, so stages 2 and 3
use the same number of threads; the table shows the thread count of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from featcache.cli.parsing import parse_layers, parse_model_kwargs
from featcache.core.context import Context
from featcache.core.errors import FeatcacheError
from featcache.core.runtime import resolve_device
from featcache.data.layouts import Sample, find_samples
from featcache.data.loading import SampleDataset, load_image
from featcache.models import EncoderRecord, WeightsSource
from featcache.models.spec import EncoderSpec
from featcache.store.encode import encode_views
from featcache.store.extract import extract
from featcache.store.extract_config import ExtractConfig
from featcache.store.feature_store import FeatureStore
from featcache.store.schema import VIEWS, DatasetRecord, Preprocessing, StoreIdentity
from featcache.store.writer import Block, BlockWriter
from featcache.store.writing import write_or_explain

console = Console()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "data",
        nargs="?",
        type=Path,
        metavar="DATA",
        help="dataset folder (any layout featcache reads); default: a synthetic 64/16/16 set in a temp dir",
    )
    p.add_argument("--arch", default="vit_b_16")
    p.add_argument("--encoder", default="random", help="random | imagenet | weights file | timm:NAME (default random)")
    p.add_argument("--encoder-weights", help="with timm:NAME: random | FILE (default: timm's pretrained weights)")
    p.add_argument(
        "--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help=("with timm:NAME: create_model options")
    )
    p.add_argument("--layers", default="-1", help="encoder blocks, e.g. -1 (default) or 3,6,9,12")
    p.add_argument("--views", default="identity", choices=sorted(VIEWS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--limit", type=int, help="first N samples for stages 1-2 (default all)")
    p.add_argument("--extract-limit", type=int, help="first N samples for stage 3 (default all)")
    p.add_argument("--store-format", default="zarr", choices=("zarr", "h5"))
    p.add_argument("--writers", type=int, help="writer threads of stage 3 (default: extract's own choice)")
    p.add_argument("--shard-size", type=int, default=32, help="samples per block in stages 3 and 4 (default 32)")
    p.add_argument("--full-size", type=int, default=0, metavar="N", help="stage 5 on N synthetic 3024x2016 JPEGs")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def machine(device: torch.device) -> str:
    """The CPU model (from /proc/cpuinfo) or the GPU's name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def subset_folder(samples: list[Sample], root: Path) -> Path:
    """A plain images/ + masks/ folder of symlinks to ``samples`` (read by the ``folders`` layout)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in samples:
        (root / "images" / f"{s.id}{s.image.suffix}").symlink_to(s.image.resolve())
        (root / "masks" / f"{s.id}.png").symlink_to(s.mask.resolve())
    return root


def row(stage: str, images: int, seconds: float, threads: int, nbytes: int = 0) -> dict:
    """One stage's figures; ``nbytes``: the bytes it moved (the write stage's MB/s), 0 where that means nothing."""
    return {
        "stage": stage,
        "images": images,
        "seconds": seconds,
        "images_per_second": images / seconds if seconds else 0.0,
        "threads": threads,
        "mb_per_second": nbytes / 1e6 / seconds if nbytes and seconds else None,
    }


def _written_alone(size: int, views: str, n: int) -> StoreIdentity:
    """The identity of the writer stage's store: random features of no real encoder, so a made-up record."""
    return StoreIdentity(
        encoder=EncoderRecord(
            arch="none (random features)",
            config={"num_layers": 1},
            normalisation={"mean": [0.5] * 3, "std": [0.25] * 3},
            source=WeightsSource("random", seed=0),
            weights_sha256="0" * 64,
        ),
        preprocessing=Preprocessing(size=size, image_interpolation="-", mask_interpolation="-", normalisation="-"),
        dataset=DatasetRecord(layout="folders", counts={"train": n}, fingerprint="bench-write-alone"),
        views=views,
        dtype="float16",
    )


def write_alone(args: argparse.Namespace, tmp: Path, n: int, width: int, grid: tuple[int, int], threads: int) -> dict:
    """Stage 4: ``n`` samples of random float16 features ``[V, width, *grid]`` (one block's worth, written to
    every block) with random uint8 images ``[3, S, S]`` and 0/1 masks ``[S, S]``, through ``threads`` writers."""
    views, size, shard = VIEWS[args.views], args.image_size, args.shard_size
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn((shard, len(views), width, *grid), generator=gen).to(torch.float16)
    images = torch.randint(0, 256, (shard, 3, size, size), dtype=torch.uint8, generator=gen).numpy()
    masks = torch.randint(0, 2, (shard, size, size), dtype=torch.uint8, generator=gen).numpy()
    out = tmp / f"write-{threads}.{args.store_format}"
    ids = [f"s{i:06d}" for i in range(n)]
    store = FeatureStore.create(
        out,
        identity=_written_alone(size, args.views, n),
        ids=ids,
        splits=["train"] * n,
        orig_hw=np.zeros((n, 2), np.int32),
        width=width,
        grid=grid,
        shard_size=shard,
    )
    with store:
        t0 = time.perf_counter()
        with BlockWriter(
            store, write_or_explain, threads, buffer_shape=tuple(feats.shape), dtype=torch.float16, pin=False
        ) as writer:
            for start, stop in store.blocks():
                k = stop - start
                buffer = writer.buffer()
                buffer[:k].copy_(feats[:k])
                rows = {"images": [images[:k]], "masks": [masks[:k]], "features": [buffer[:k]], "bad": []}
                writer.submit(Block(start, stop, rows, buffer, None))
        seconds = time.perf_counter() - t0
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    nbytes = n * (images[0].nbytes + masks[0].nbytes + feats[0].numel() * feats.element_size())
    return row(f"4 write alone, {threads} writer{'s' if threads > 1 else ''}", n, seconds, threads, nbytes)


class ImagesOnly(Dataset):
    """``load_image`` alone (no mask), for stage 5's worker row."""

    def __init__(self, paths: list[Path], size: int) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(load_image(self.paths[i], self.size))


def gpu_decode(paths: list[Path], size: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """nvJPEG: files read here, decoded in batches on ``device``, resized to ``[B, 3, size, size]`` uint8 there
    (bilinear, antialiased: close to PIL's filter)."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    out = []
    for i in range(0, len(paths), batch_size):
        data = [read_file(str(p)) for p in paths[i : i + batch_size]]
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        resized = [
            F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            for img in decoded
        ]
        out.append(torch.cat(resized).round_().clamp_(0, 255).to(torch.uint8))
    return out


def decode_stage(args: argparse.Namespace, samples: list[Sample], device: torch.device, tmp: Path) -> list[dict]:
    """Stage 5: JPEG decoding and resizing by DataLoader workers, then by nvJPEG on the GPU (skipped without CUDA)."""
    if args.full_size:
        from featcache.data.synth import SynthConfig, synthesize

        console.print(f"synthesizing {args.full_size} JPEGs of 3024x2016 (not timed) ...")
        full = synthesize(
            SynthConfig(tmp / "full", n_train=args.full_size, n_val=0, n_test=0, image_size=(2016, 3024))
        ).out
        paths = sorted(full.rglob("*.jpg"))
    else:
        paths = [s.image for s in samples if s.image.suffix.lower() in (".jpg", ".jpeg")]
    what = "3024x2016" if args.full_size else "the data's"
    loader = DataLoader(ImagesOnly(paths, args.image_size), batch_size=args.batch_size, num_workers=args.workers)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    rows = [row(f"5 {what} JPEGs, workers", len(paths), time.perf_counter() - t0, torch.get_num_threads())]
    if device.type != "cuda":
        rows.append({"stage": f"5 {what} JPEGs, GPU nvJPEG", "skipped": "no CUDA"})
        return rows
    gpu_decode(paths[: args.batch_size], args.image_size, args.batch_size, device)  # warm-up, untimed
    sync(device)
    t0 = time.perf_counter()
    gpu_decode(paths, args.image_size, args.batch_size, device)
    sync(device)
    rows.append(row(f"5 {what} JPEGs, GPU nvJPEG", len(paths), time.perf_counter() - t0, torch.get_num_threads()))
    return rows


def run(args: argparse.Namespace, tmp: Path) -> dict:
    device = resolve_device(args.device)
    data = args.data
    if data is None:
        from featcache.data.synth import SynthConfig, synthesize

        console.print("synthesizing 64/16/16 images of varied sizes (not timed) ...")
        data = synthesize(SynthConfig(tmp / "synth", n_train=64, n_val=16, n_test=16)).out
    samples = find_samples(data).samples
    bench = samples[: args.limit] if args.limit else samples
    views = VIEWS[args.views]
    threads_start = torch.get_num_threads()
    rows = []

    # 1. decode + resize
    loader = DataLoader(
        SampleDataset(bench, args.image_size), batch_size=args.batch_size, num_workers=args.workers, shuffle=False
    )
    t0 = time.perf_counter()
    batches = [b["image"] for b in loader]
    rows.append(row("1 decode+resize", len(bench), time.perf_counter() - t0, torch.get_num_threads()))
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]

    # 2. encoder alone on pre-decoded uint8 batches
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)  # what extract() does on CPU
    kwargs, layers = parse_model_kwargs(args.model_kwargs), parse_layers(args.layers)
    spec = EncoderSpec.parse(args.encoder, arch=args.arch, weights=args.encoder_weights, model_kwargs=kwargs)
    encoder = spec.build().to(device).eval()
    width, grid = encoder.width, (args.image_size // encoder.patch_size,) * 2
    encode_views(encoder, batches[0], views, device=device)  # warm-up, untimed
    sync(device)
    t0 = time.perf_counter()
    for b in batches:
        encode_views(encoder, b, views, device=device)
    sync(device)
    rows.append(
        row(
            f"2 encoder alone, {len(views)} view{'s' if len(views) > 1 else ''}",
            len(bench),
            time.perf_counter() - t0,
            torch.get_num_threads(),
        )
    )
    del encoder

    # 3. whole extract into a temporary store
    extract_samples = samples[: args.extract_limit] if args.extract_limit else samples
    extract_data = subset_folder(extract_samples, tmp / "subset") if args.extract_limit else data
    cfg = ExtractConfig(
        data=extract_data,
        out=str(tmp / f"store.{args.store_format}"),
        encoder=args.encoder,
        arch=args.arch,
        encoder_weights=args.encoder_weights,
        model_kwargs=kwargs,
        layers=layers,
        image_size=args.image_size,
        views=args.views,
        batch_size=args.batch_size,
        workers=args.workers,
        writers=args.writers,
        shard_size=args.shard_size,
    )
    t0 = time.perf_counter()
    report = extract(cfg, ctx=Context(device=device, progress=False))
    sync(device)
    wall = time.perf_counter() - t0
    rows.append(row("3 extract, wall", report.computed, wall, torch.get_num_threads()))
    rows.append(row("3 extract, loop", report.computed, report.seconds, torch.get_num_threads()))

    # 4. the store writer alone, by writer threads
    for threads in (1,) if args.store_format == "h5" else (1, 2, 4):
        rows.append(write_alone(args, tmp, max(len(extract_samples), 8 * args.shard_size), width, grid, threads))

    # 5. JPEG decoding: DataLoader workers against nvJPEG
    rows += decode_stage(args, bench, device, tmp)

    return {
        "machine": machine(device),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads_at_start": threads_start,
        "interop_threads": torch.get_num_interop_threads(),
        "data": "synthetic (featcache.synth, 64/16/16, varied sizes)" if args.data is None else str(args.data),
        "samples_in_data": len(samples),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "stages": rows,
        "ratio_whole_over_encoder": rows[3]["images_per_second"] / rows[1]["images_per_second"],
        "ratio_whole_wall_over_encoder": rows[2]["images_per_second"] / rows[1]["images_per_second"],
    }


def show(result: dict) -> None:
    o = result["options"]
    console.print(f"machine: {result['machine']}, device {result['device']}, {result['cpu_count']} CPUs")
    console.print(
        f"torch {result['torch']}, threads at start {result['threads_at_start']}, "
        f"interop threads {result['interop_threads']}"
    )
    console.print(f"data: {result['data']} ({result['samples_in_data']} samples)")
    console.print(f"arch {o['arch']}, encoder {o['encoder']}, views {o['views']}, {o['image_size']} px")
    console.print(f"batch {o['batch_size']}, workers {o['workers']}, store {o['store_format']}")
    table = Table(title="images/s per stage")
    for name, justify in (
        ("stage", "left"),
        ("images", "right"),
        ("seconds", "right"),
        ("images/s", "right"),
        ("torch threads", "right"),
    ):
        table.add_column(name, justify=justify)
    table.add_column("MB/s", justify="right")
    for r in result["stages"]:
        if "skipped" in r:
            table.add_row(r["stage"], f"skipped: {r['skipped']}", "", "", "", "")
            continue
        mb = r.get("mb_per_second")
        table.add_row(
            r["stage"],
            str(r["images"]),
            f"{r['seconds']:.2f}",
            f"{r['images_per_second']:.2f}",
            str(r["threads"]),
            f"{mb:.1f}" if mb else "",
        )
    console.print(table)
    console.print("3 wall: the whole extract() call; 3 loop: extract's own timer")
    console.print("(3 loop leaves out indexing, encoder build, store creation)")
    console.print(
        "4: random float16 features through the store writer; MB/s of images + masks + features, uncompressed"
    )
    console.print("4: its 'torch threads' column holds the writer threads; 5: images only, resized to the image size")
    console.print(
        f"ratio whole/encoder-alone (images/s): {result['ratio_whole_over_encoder']:.2f} (loop), "
        f"{result['ratio_whole_wall_over_encoder']:.2f} (wall)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
            result = run(args, Path(tmp))
    except FeatcacheError as exc:
        Console(stderr=True).print(f"error: {exc}")
        return 1
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
