"""The command line: each command parses its options and calls one library function."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.table import Table

from featcache.errors import FeatcacheError, OptionError
from featcache.runtime import err_console, out_console, resolve_device

app = typer.Typer(
    name="featcache",
    help="Few-shot segmentation with a frozen encoder: features computed once, decoders trained from a store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class GlobalOptions:
    device: str = "auto"
    debug: bool = False


state = GlobalOptions()

#: train-decoder's and compare-e2e's switch for `featcache.graphs`.
CUDA_GRAPHS = typer.Option(
    True,
    "--cuda-graphs/--no-cuda-graphs",
    help="On CUDA, replay each training epoch and validation pass as a CUDA graph after the first (same "
    "results, far fewer launches); --no-cuda-graphs runs every step eagerly, e.g. to rule graphs out.",
)


@app.callback()
def _global(
    device: str = typer.Option(
        "auto", help="auto | cpu | cuda | cuda:N; commands with their own --device override it."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error."),
) -> None:
    state.debug = debug
    resolve_device(device)
    state.device = device


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the ISIC 2017 layout into."),
    n_train: int = typer.Option(40, min=1),
    n_val: int = typer.Option(10, min=1),
    n_test: int = typer.Option(10, min=1),
    image_size: str | None = typer.Option(
        None, help="HxW for every image (e.g. 48x64); default: varied ISIC-like sizes."
    ),
    seed: int = typer.Option(0),
) -> None:
    """Write procedural dermoscopy-like images and masks in the ISIC 2017 layout."""
    from featcache.synth import synthesize

    size = None
    if image_size is not None:
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"{image_size!r} is not HxW, e.g. 48x64", param_hint="--image-size") from None
        size = (h, w)
    report = synthesize(out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=size, seed=seed, progress=True)
    out_console.print(f"wrote {report.counts} images to {report.out}; contact sheet {report.contact_sheet}")


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(
        ...,
        help="Predicted masks: names holding the ISIC id, or <stem>_segmentation.png / <stem>.png (as predict writes).",
    ),
    truth_dir: Path = typer.Argument(
        ...,
        help="Truth masks: ISIC_<id>_segmentation.png, or a plain masks/ folder (<stem>.png or "
        "<stem>_segmentation.png).",
    ),
    convention: str = typer.Option("study", help="study (eps in denominators) | isic (official scorer)."),
    threshold: float = typer.Option(0.5, min=0.0, max=1.0),
    json_out: Path | None = typer.Option(None, "--json", help="Write {mean, per_image} here."),
    csv_out: Path | None = typer.Option(
        None, "--csv", help="Per-image CSV (default: beside --json, else pred_dir/per_image.csv)."
    ),
    predicted_only: bool = typer.Option(
        False, "--predicted-only", help="Score the predicted images alone (the truth folder may hold more)."
    ),
) -> None:
    """Score predicted masks against ISIC truth masks."""
    from featcache.metrics import evaluate_dirs

    result = evaluate_dirs(
        pred_dir, truth_dir, convention=convention, threshold=threshold, predicted_only=predicted_only
    )
    table = Table(title=f"{len(result.per_image)} images, {convention} convention")
    table.add_column("metric")
    table.add_column("mean", justify="right")
    for name, value in result.mean.items():
        table.add_row(name, f"{value:.4f}")
    out_console.print(table)
    if json_out is not None:
        result.to_json(json_out)
    csv_path = csv_out or (json_out.with_suffix(".csv") if json_out else pred_dir / "per_image.csv")
    result.to_csv(csv_path)
    err_console.print(f"per-image scores: {csv_path}")


@app.command()
def pretrain(
    data: Path = typer.Argument(..., help="Dataset folder (its training split trains, its validation split selects)."),
    out: Path = typer.Option(..., "--out", help="ENCODER.pt (figures and history are written beside it)."),
    arch: str = typer.Option("vit_b_16", help="vit_b_16 | vit_s_16 | vit_ti_16 | vit_mini | vit_micro."),
    init: str = typer.Option(
        "imagenet",
        help=(
            "imagenet | random | a torchvision state dict | a featcache encoder "
            "checkpoint | timm:NAME (any timm model)."
        ),
    ),
    encoder_weights: str | None = typer.Option(
        None,
        help=(
            "With --init timm:NAME: random | FILE (safetensors or "
            "a state dict); default: timm's pretrained weights (its cache, else downloaded)."
        ),
    ),
    model_kwargs: list[str] = typer.Option(
        [], help=("With --init timm:NAME: a timm.create_model option KEY=VALUE (repeatable), e.g. depth=6.")
    ),
    seed: int = typer.Option(0, help="Seed of the random init, batch order and noise."),
    epochs: int = typer.Option(32),
    batch_size: int = typer.Option(40),
    lr: float = typer.Option(2e-5, help="Adam learning rate."),
    noise_std: float = typer.Option(0.1, help="Gaussian noise std, pixel range [0, 1]."),
    image_size: int = typer.Option(224, help="Training resolution (a multiple of 16)."),
    workers: int = typer.Option(0, help="DataLoader workers for the one-off image loading."),
    checkpoint_seconds: float = typer.Option(
        60.0, help="Least seconds between two resume-state writes (0: every epoch)."
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """Self-supervised denoising pretraining of the encoder (the study's VE + RD)."""
    from featcache.pretrain import PretrainConfig
    from featcache.pretrain import pretrain as run_pretrain
    from featcache.timm_encoder import parse_model_kwargs

    report = run_pretrain(
        PretrainConfig(
            data=data,
            out=out,
            arch=arch,
            init=init,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            noise_std=noise_std,
            image_size=image_size,
            workers=workers,
            device=device or state.device,
            checkpoint_seconds=checkpoint_seconds,
            init_weights=encoder_weights,
            model_kwargs=parse_model_kwargs(model_kwargs),
        )
    )
    out_console.print(
        f"wrote {report.out}: best epoch {report.best_epoch} (validation MSE {report.best_val_loss:.5f}), "
        f"{report.seconds:.1f} s of training; figures {', '.join(str(f) for f in report.figures)}"
    )


@app.command()
def extract(
    data: Path = typer.Argument(..., help="Dataset folder (ISIC 2017/2018 layout or images/ + masks/)."),
    out: str = typer.Option(..., "--out", help="STORE.zarr (Zarr v3, also an fsspec URL) or STORE.h5 (HDF5)."),
    encoder: str = typer.Option(
        "imagenet",
        help=(
            "imagenet | random | a torchvision state dict | a featcache "
            "encoder checkpoint | timm:NAME (any timm model, e.g. timm:vit_base_patch14_dinov2.lvd142m)."
        ),
    ),
    arch: str = typer.Option(
        "vit_b_16",
        help=("vit_b_16 | vit_s_16 | vit_ti_16 | vit_mini | vit_micro (a checkpoint or timm:NAME brings its own)."),
    ),
    encoder_weights: str | None = typer.Option(
        None,
        help=(
            "With --encoder timm:NAME: random | FILE (safetensors "
            "or a state dict); default: timm's pretrained weights (its cache, else downloaded)."
        ),
    ),
    model_kwargs: list[str] = typer.Option(
        [], help=("With --encoder timm:NAME: a timm.create_model option KEY=VALUE (repeatable), e.g. depth=6.")
    ),
    layers: str = typer.Option(
        "-1",
        help=("Encoder blocks stored, e.g. 3,6,9,12 or -4,-3,-2,-1 (1-based; -1: the last, the final normed output)."),
    ),
    seed: int = typer.Option(0, help="Seed of random weights."),
    image_size: int = typer.Option(
        224, help=("Images are resized to SxS (a multiple of the patch size: 16, or 14 for DINOv2).")
    ),
    views: str = typer.Option("identity", help="identity | flips (identity, h, v, hv: exact flip augmentation)."),
    dtype: str = typer.Option("float16", help="float16 | float32 | bfloat16."),
    batch_size: int = typer.Option(32, help="Images per encoder batch (each with all its views)."),
    workers: int | None = typer.Option(None, help="DataLoader workers decoding JPEGs (default: cores, at most 8)."),
    shard_size: int = typer.Option(32, help="Samples per shard (Zarr) / write block."),
    compressor: str = typer.Option(
        "auto", help="Zarr: lz4 (auto) | zstd | gzip | none; HDF5: none (auto) | gzip | lzf."
    ),
    val_fraction: float = typer.Option(0.15, help="Validation fraction drawn from training when the layout has none."),
    test_fraction: float = typer.Option(0.15, help="Test fraction drawn from training when the layout has none."),
    split_seed: int = typer.Option(0, help="Seed of that draw."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store of other provenance."),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Leave out unreadable images/masks (recorded in the store)."
    ),
    skip_unpaired: bool = typer.Option(
        False, "--skip-unpaired", help="Leave out images without masks and masks without images (recorded)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Refuse masks that are not 0/255 gray images instead of binarising them."
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """Compute the encoder's features of every sample once and write them to a store (resumable)."""
    from featcache.data import SplitConfig
    from featcache.extract import ExtractConfig
    from featcache.extract import extract as run_extract
    from featcache.models import parse_layers
    from featcache.timm_encoder import parse_model_kwargs

    cfg = ExtractConfig(
        data=data,
        out=out,
        encoder=encoder,
        arch=arch,
        encoder_weights=encoder_weights,
        model_kwargs=parse_model_kwargs(model_kwargs),
        layers=parse_layers(layers),
        seed=seed,
        image_size=image_size,
        views=views,
        dtype=dtype,
        batch_size=batch_size,
        shard_size=shard_size,
        compressor=compressor,
        overwrite=overwrite,
        device=device or state.device,
        split=SplitConfig(val_fraction, test_fraction, split_seed),
        skip_bad=skip_bad,
        skip_unpaired=skip_unpaired,
        strict=strict,
    )
    if workers is not None:
        cfg.workers = workers
    report = run_extract(cfg)
    if report.rank != 0:
        return
    verb = "resumed" if report.resumed else "wrote"
    out_console.print(
        f"{verb} {report.path}: {report.computed} of {report.n} samples computed in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s)"
    )


@app.command()
def info(
    store: str = typer.Argument(..., help="A .zarr or .h5 store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Provenance, shapes, size on disk, completeness and the flip check ("cos") of a store."""
    import json

    from featcache.info import store_info

    summary = store_info(store)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=str(store), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("complete", f"{summary['complete']} ({summary['written']}/{summary['n']} written)")
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    table.add_row("encoder", summary["encoder_summary"])
    blocks = ", ".join(map(str, summary["layers"]))
    table.add_row(
        "layers",
        f"block{'s' if len(summary['layers']) > 1 else ''} {blocks} "
        f"of {summary['depth']} (concatenated on channels); patch {summary['patch_size']} px, "
        f"grid {'x'.join(map(str, summary['grid']))}",
    )
    table.add_row(
        "features", f"{summary['shapes']['features']} {summary['dtype']}, views {', '.join(summary['views'])}"
    )
    table.add_row("images / masks", f"{summary['shapes']['images']} / {summary['shapes']['masks']}")
    table.add_row("on disk", f"{summary['bytes_on_disk'] / 2**20:.1f} MiB ({summary['backend']})")
    checksum = summary["checksum"]
    table.add_row(
        "checksums",
        f"{checksum} on every chunk (`featcache verify` reads them all)"
        if checksum
        else f"none (store format {summary['format_version']}: extract again for checksums)",
    )
    table.add_row(
        "dataset", f"{summary['dataset']['root']} ({summary['dataset']['layout']}) {summary['dataset']['split_note']}"
    )
    extraction = summary["extraction"] or {}
    if extraction:
        table.add_row(
            "extraction",
            f"{extraction['seconds']} s on {extraction['device']} ({extraction['images_per_second']} images/s)",
        )
    left_out = summary["skipped_bad"] + summary["dataset"].get("skipped", [])
    if left_out:
        table.add_row("left out", f"{len(left_out)} unreadable or unpaired files: {', '.join(left_out[:5])}")
    cos = summary["flip_check_cos"]
    if cos is not None:
        views = ", ".join(f"{k} {v:.4f}" for k, v in cos.items() if k != "mean")
        table.add_row("flip check", f"cos {cos['mean']:.4f} (feature flip vs features of the flipped image: {views})")
    elif not summary["complete"]:
        table.add_row("flip check", "after the extraction finishes (run the same `featcache extract` again)")
    else:
        table.add_row("flip check", "no flip views (extract with --views flips)")
    out_console.print(table)


@app.command()
def verify(
    store: str = typer.Argument(..., help="A .zarr or .h5 store."),
    repair: bool = typer.Option(False, "--repair", help="Mark damaged blocks unwritten, for the same extract to redo."),
) -> None:
    """Read every chunk of a store and list the damaged blocks (missing, checksum mismatch, undecodable)."""
    from featcache.verify import verify_store

    report = verify_store(store, repair=repair)
    kind = (
        "checksums checked"
        if report.checksummed
        else "no checksums in this format-1 store: only missing and undecodable chunks are seen"
    )
    if report.clean:
        out_console.print(f"{store}: every chunk of {report.n} samples read, no damage ({kind})")
        return
    table = Table(title=f"{store}: {len(report.damages)} damaged ranges ({kind})")
    table.add_column("array")
    table.add_column("rows", justify="right")
    table.add_column("what")
    for d in report.damages:
        table.add_row(d.array, d.rows, d.what)
    out_console.print(table)
    if report.unrepairable or not report.repaired:
        raise FeatcacheError(report.fix())
    out_console.print(report.fix())


@app.command("train-decoder")
def train_decoder(
    store: str = typer.Argument(..., help="A complete store (featcache extract)."),
    size: int = typer.Option(..., help="Training images (a seeded subset of the training split)."),
    seeds: str = typer.Option("0,1,2", help="Seeds, e.g. 0,1,2 or 0-4: one run (subset, init, order) each."),
    augment: str = typer.Option("exact", help="exact (stored flip views) | feature-flip (approximate) | none."),
    decoder: str = typer.Option("sd", help="sd (the study's decoder) | linear (a per-patch linear probe)."),
    epochs: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    batch_size: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    val_size: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    lr: str = typer.Option(
        "2e-4",
        help="SGD learning rate (momentum 0.9), or a list (1e-4,2e-4,5e-4): a grid, every value x --weight-decay "
        "x --seeds, grouped on CUDA, each in OUT/lr-X_wd-Y/seed-K, with the choice on validation per seed.",
    ),
    weight_decay: str = typer.Option("1e-4", help="SGD weight decay, or a list (1e-4,1e-3): a grid with --lr."),
    eval_size: str = typer.Option("224", help="224 (the store's size) | original (logits upsampled to each image)."),
    out: Path | None = typer.Option(None, help="RUN_DIR (default runs/<store>-C-<decoder>-n<size>)."),
    encoder: str | None = typer.Option(
        None,
        help=(
            "If given, the encoder you expect the store to hold (imagenet "
            "| random | FILE | timm:NAME); refused if it differs."
        ),
    ),
    layers: str | None = typer.Option(
        None,
        help=(
            "The stored blocks the decoder reads, e.g. -1 or 9,12 "
            "(concatenated on channels); default: every stored block."
        ),
    ),
    checkpoint_seconds: float = typer.Option(
        60.0, help="Least seconds between two resume-state writes (0: every epoch)."
    ),
    grouped: bool | None = typer.Option(
        None,
        "--grouped/--sequential",
        help="Train the seeds (and a grid's combinations) together as one grouped network (same results); "
        "default: grouped on CUDA; on the CPU seeds one by one, where grouping them measured slower, and a grid's "
        "combinations of each seed grouped, where that measured faster.",
    ),
    cuda_graphs: bool = CUDA_GRAPHS,
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """Train a decoder straight from the store, once per seed (and learning rate and weight decay), and summarise
    over seeds."""
    from featcache.experiment import parse_numbers, parse_seeds
    from featcache.experiment import train_decoder as run_train
    from featcache.models import parse_layers
    from featcache.train import TrainConfig

    lrs, weight_decays = parse_numbers(lr, "--lr"), parse_numbers(weight_decay, "--weight-decay")
    cfg = TrainConfig(
        size=size,
        augment=augment,
        decoder=decoder,
        epochs=epochs,
        batch_size=batch_size,
        val_size=val_size,
        lr=lrs[0],
        weight_decay=weight_decays[0],
        eval_size=eval_size,
        layers=parse_layers(layers) if layers else None,
    )
    run_out = out or Path("runs") / f"{Path(store.rstrip('/')).stem}-C-{decoder}-n{size}"
    from featcache.report import grid_table, seeds_table

    sweep = run_train(
        store,
        cfg,
        parse_seeds(seeds),
        run_out,
        device or state.device,
        encoder=encoder,
        grouped=grouped,
        checkpoint_seconds=checkpoint_seconds,
        lrs=lrs,
        weight_decays=weight_decays,
        cuda_graphs=cuda_graphs,
    )
    if not sweep.summary:  # a torchrun rank other than 0: rank 0 reports
        return
    if "grid" in sweep.summary:
        n_seeds = sweep.summary["grid"][0]["n_runs"]
        title = f"C mode, {size} training images, {len(sweep.summary['grid'])} (lr, weight decay) x {n_seeds} seeds"
        out_console.print(grid_table(sweep.summary, f"{title} ({augment} flips): mean ± std over seeds"))
    else:
        title = f"C mode, {size} training images, {len(sweep.results)} seeds ({augment} flips)"
        out_console.print(seeds_table(sweep.results, sweep.summary, title))
    out_console.print(f"runs and summary.json in {sweep.out}")


@app.command()
def predict(
    run_dir: Path = typer.Argument(
        ..., help="A train-decoder output (a seed-K folder, or the sweep folder: best seed by validation loss)."
    ),
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    out: Path = typer.Option(..., "--out", help="Folder for <stem>_segmentation.png (and overlays/)."),
    truth: Path | None = typer.Option(None, help="Folder of truth masks (<stem>_segmentation.png) to outline in red."),
    overlays: str = typer.Option(
        "preview",
        help="overlays/<stem>_overlay.jpg with a long side of at most 1024 px "
        "(preview) | overlays/<stem>_overlay.png at the image's size (full) | none.",
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
    encoder: str | None = typer.Option(
        None, help=("The encoder's weights file if it moved since extraction, or timm:NAME (checked by hash).")
    ),
) -> None:
    """Predict masks at each image's own resolution, with overlays (truth red, prediction green)."""
    from featcache.predict import predict as run_predict

    predictions = run_predict(
        run_dir, images, out, truth, device or state.device, encoder_weights=encoder, overlays=overlays
    )
    table = Table(title=f"{len(predictions)} masks in {out}")
    table.add_column("image")
    table.add_column("lesion %", justify="right")
    for p in predictions:
        table.add_row(p.image.name, f"{100 * p.lesion_fraction:.1f}")
    out_console.print(table)


@app.command("compare-e2e")
def compare_e2e(
    store: str = typer.Argument(..., help="A complete store whose encoder is the self-supervised one."),
    encoder: str | None = typer.Option(
        None,
        help=(
            "Default: the store's own encoder (from its provenance); must "
            "match it (imagenet | random | FILE | timm:NAME)."
        ),
    ),
    e_init: str | None = typer.Option(
        None,
        help=(
            "imagenet | random | PATH | timm:NAME (for the store's "
            "architecture); default: the weights the store's encoder started from."
        ),
    ),
    layers: str | None = typer.Option(
        None, help=("The stored blocks every mode reads, e.g. -1 or 9,12; default: every stored block.")
    ),
    sizes: str = typer.Option("2000,160,80,40,20,10", help="Training-set sizes."),
    seeds: str = typer.Option("0,1,2", help="Seeds, e.g. 0,1,2 or 0-4."),
    modes: str = typer.Option("E,Es,F,FI,C", help="Any of E, Es, F, FI, C."),
    epochs: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    batch_size: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    val_size: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    lr: str = typer.Option(
        "2e-4",
        help="SGD learning rate of every mode (the study's 2e-4), or a list (2e-4,1e-4,5e-4): the --grid-modes train "
        "at each, the others at the first; the report adds the grid.",
    ),
    grid_modes: str = typer.Option("C", help="The modes that train every learning rate of a --lr list."),
    augment: str = typer.Option(
        "exact",
        help="exact (image flips / stored views) | feature-flip (C approximates, encoder modes flip images) | none.",
    ),
    out: Path = typer.Option(Path("runs/compare-e2e"), help="REPORT_DIR."),
    cuda_graphs: bool = CUDA_GRAPHS,
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """Train every mode on the same subsets and protocol; write report.md with figures and tables."""
    from featcache.experiment import CompareConfig, parse_list, parse_numbers, parse_seeds
    from featcache.experiment import compare_e2e as run_compare
    from featcache.models import parse_layers

    lrs = parse_numbers(lr, "--lr")

    cfg = CompareConfig(
        store=store,
        out=out,
        encoder=encoder,
        e_init=e_init,
        sizes=parse_list(sizes, "--sizes"),
        seeds=tuple(parse_seeds(seeds)),
        modes=parse_list(modes, "--modes", str),
        epochs=epochs,
        batch_size=batch_size,
        val_size=val_size,
        lr=lrs[0] if len(lrs) == 1 else tuple(lrs),
        augment=augment,
        device=device or state.device,
        layers=parse_layers(layers) if layers else None,
        grid_modes=parse_list(grid_modes, "--grid-modes", str),
        cuda_graphs=cuda_graphs,
    )
    from featcache.report import compare_table

    result = run_compare(cfg)
    if result.report is None:  # a torchrun rank other than 0: rank 0 reports
        return
    # A grid's other learning rates are in the report; the modes compare at the first.
    out_console.print(compare_table([r for r in result.results if r["optimiser"]["lr"] == lrs[0]]))
    out_console.print(f"report: {result.report}")


@app.command()
def demo(
    out: Path = typer.Option(Path("featcache-demo"), help="Folder for the data, encoder, store and report."),
    data: Path | None = typer.Option(
        None, help="A real dataset instead of synthetic images (e.g. ISIC 2017 at 256 px)."
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """synth -> pretrain (small ViT) -> extract (flips) -> compare-e2e (E, F, C) -> report, in minutes on a CPU."""
    from featcache.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=out, data=data, device=device or state.device)
    from featcache.report import compare_table

    result = run_demo(cfg)
    out_console.print(compare_table(result.comparison.results))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items())
    out_console.print(f"demo finished in {result.seconds:.0f} s ({steps}); shortened settings: {cfg.shortenings()}")
    out_console.print(f"report: {result.comparison.report}")


def _restore_ctrl_c() -> None:
    """Make SIGINT raise KeyboardInterrupt, even when it was inherited ignored (``cmd &`` in a script)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line on stderr; exit 1 for bad input, 2 for usage errors (typer's and option values).

    Ctrl-C: "interrupted" and exit code 130.
    """
    try:
        _restore_ctrl_c()
        # Outside standalone mode, typer turns Ctrl-C into a returned exit code (130), not an exception.
        code = app(args=argv, standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted", style="red")
        sys.exit(1)
    except typer.TyperException as exc:  # usage errors: typer's message and exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    except FeatcacheError as exc:
        if state.debug:
            traceback.print_exc()
        err_console.print(f"error: {exc}", style="red", soft_wrap=True, highlight=False, markup=False)
        sys.exit(2 if isinstance(exc, OptionError) else 1)
    except KeyboardInterrupt:
        err_console.print("interrupted", style="red")
        sys.exit(130)
    except Exception as exc:
        if state.debug:
            traceback.print_exc()
        err_console.print(
            f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            style="red",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        sys.exit(1)
