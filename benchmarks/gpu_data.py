"""The dataset of `benchmarks/gpu.sh`: synthetic, or the real ISIC 2017 training images beside synthetic val/test.

Both are in the ISIC 2017 layout that `featcache.data.find_samples` reads, with the three splits in
their own folders (nothing is drawn from the training folder, so a size of 2,000 trains on all 2,000):

    python benchmarks/gpu_data.py synth OUT --n-train 2000 --n-val 150 --n-test 600 [--image-size HxW]
    python benchmarks/gpu_data.py isic SRC OUT --n-val 150 --n-test 600
    python benchmarks/gpu_data.py describe OUT --json data.json

``synth``: `featcache.data.synth` with worker processes in place of its threads (which share one
interpreter lock): the same files. A folder that a finished synth run made with the same counts is
kept. ``isic``: copies ``SRC``'s ``ISIC-2017_Training_Data/*.jpg`` and
``ISIC-2017_Training_Part1_GroundTruth/*_segmentation.png`` into ``OUT`` as the training split and
synthesises the validation and test folders at the size of the first training image, with ids from
`SYNTH_ID_OFFSET` on (featcache refuses an id in two splits); ``OUT/gpu-data.json``, written last,
marks it finished. ``describe``: one line on what a folder holds (real or synthetic, counts per
split), also written as JSON with ``--json``; every command ends with it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from featcache.data import synth
from featcache.data.layouts import SPLITS, find_samples, header_hw

MARKER = "gpu-data.json"
# Real ISIC ids stay below 0100000 (2017: up to 0015xxx); synthetic ones start far above them.
SYNTH_ID_OFFSET = 9_000_000
# The source's training folders: (name, files copied, the synth function naming the copy's folder).
TRAINING_FOLDERS = (
    ("ISIC-2017_Training_Data", "ISIC_*.jpg", synth.data_dir),
    ("ISIC-2017_Training_Part1_GroundTruth", "ISIC_*_segmentation.png", synth.truth_dir),
)


def synthesize(out: Path, n_train: int, n_val: int, n_test: int, image_size: tuple[int, int] | None) -> None:
    """`featcache.data.synth.synthesize` in worker processes, seed 0; keeps ``out`` when a finished run made it."""
    counts = {"train": n_train, "val": n_val, "test": n_test}
    marker = out / synth.MARKER_NAME
    if (out / synth.CONTACT_SHEET_NAME).exists() and marker.exists():
        old = json.loads(marker.read_text())
        if (
            old["counts"] == counts
            and old["image_size"] == (list(image_size) if image_size else None)
            and old["seed"] == 0
        ):
            print(f"{out}: kept, made earlier with the same counts")
            return
    synth.ThreadPoolExecutor = ProcessPoolExecutor
    synth.synthesize(synth.SynthConfig(out, n_train, n_val, n_test, image_size=image_size))


def check_source(src: Path) -> None:
    """Exit with a message when ``src`` holds no ISIC 2017 training images."""
    if not any((src / TRAINING_FOLDERS[0][0]).glob(TRAINING_FOLDERS[0][1])):
        raise SystemExit(f"{src}: no ISIC-2017_Training_Data/ISIC_*.jpg; pass the folder of the ISIC 2017 training set")


def copy_isic_training(src: Path, out: Path) -> int:
    """Copy ``src``'s ISIC 2017 training images and masks into ``out``'s training folders; returns the image count."""
    for name, pattern, folder in TRAINING_FOLDERS:
        target = folder(out, "train")
        target.mkdir(parents=True)
        for path in sorted((src / name).glob(pattern)):
            shutil.copyfile(path, target / path.name)
    return len(list(synth.data_dir(out, "train").iterdir()))


def add_synthetic_splits(out: Path, n_val: int, n_test: int, image_size: tuple[int, int]) -> None:
    """Synthetic validation and test folders in ``out``, their ids moved up by `SYNTH_ID_OFFSET`."""
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        made = Path(tmp) / "synth"
        synthesize(made, 1, n_val, n_test, image_size)
        for split in ("val", "test"):
            for folder in (synth.data_dir, synth.truth_dir):
                target = folder(out, split)
                target.mkdir()
                for path in sorted(folder(made, split).iterdir()):
                    index = int(path.name[5:12])  # ISIC_<7 digits>...
                    path.rename(
                        target / path.name.replace(synth.isic_id(index), synth.isic_id(SYNTH_ID_OFFSET + index))
                    )


def build_isic(src: Path, out: Path, n_val: int, n_test: int) -> None:
    """``out`` rebuilt from ``src``'s training images and synthetic val/test, its `MARKER` written last."""
    check_source(src)
    if out.exists():
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise SystemExit(f"{out} is not empty and holds no {MARKER}; pass a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n_train = copy_isic_training(src, out)
    first = next(synth.data_dir(out, "train").iterdir())
    image_size = header_hw(first)
    add_synthetic_splits(out, n_val, n_test, image_size)
    marker = {
        "kind": "real ISIC 2017 training images, synthetic validation and test",
        "source": str(src),
        "counts": {"train": n_train, "val": n_val, "test": n_test},
        "synthetic_image_size": list(image_size),
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def describe(root: Path, json_path: Path | None) -> None:
    """Print what ``root`` holds (real or synthetic, counts per split as featcache reads them); write it as JSON."""
    index = find_samples(root)
    marker = root / MARKER
    kind = json.loads(marker.read_text())["kind"] if marker.exists() else "synthetic (featcache synth)"
    counts = index.counts()
    print(f"data: {kind}; {'/'.join(str(counts[s]) for s in SPLITS)} train/val/test images in {root}")
    if index.split_note:
        raise SystemExit(f"{root}: {index.split_note}; the GPU run needs every split in its own folder")
    if json_path:
        json_path.write_text(json.dumps({"kind": kind, "root": str(root), "counts": counts}, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="synthetic images in every split")
    s.add_argument("out", type=Path)
    for name in ("--n-train", "--n-val", "--n-test"):
        s.add_argument(name, type=int, required=True)
    s.add_argument("--image-size", help="HxW in pixels (default: varied ISIC-like sizes)")
    i = sub.add_parser("isic", help="the real ISIC 2017 training images, synthetic val/test")
    i.add_argument("src", type=Path)
    i.add_argument("out", type=Path)
    i.add_argument("--n-val", type=int, default=150)
    i.add_argument("--n-test", type=int, default=600)
    d = sub.add_parser("describe", help="what a folder holds")
    d.add_argument("out", type=Path)
    for parser in (s, i, d):
        parser.add_argument("--json", type=Path, help="also write the description here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "synth":
        size = tuple(int(x) for x in args.image_size.split("x")) if args.image_size else None
        synthesize(args.out, args.n_train, args.n_val, args.n_test, size)
    elif args.command == "isic":
        build_isic(args.src, args.out, args.n_val, args.n_test)
    describe(args.out, args.json)


if __name__ == "__main__":
    main()
