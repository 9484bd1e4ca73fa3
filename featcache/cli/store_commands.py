"""Commands of the store: extract, info, verify."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from featcache.cli.app import context
from featcache.cli.config_file import CONFIG
from featcache.core.errors import FeatcacheError
from featcache.core.runtime import out_console

if TYPE_CHECKING:
    from featcache.store.info import StoreInfo


def extract(
    *,
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
    tail_tokens: int | None = typer.Option(
        None,
        help="K: also store the tokens entering the encoder's last K blocks (the `tokens` array), so that "
        "train-decoder --train-blocks k <= K trains those blocks from the store (modes Tk).",
    ),
    config: Path | None = CONFIG,
) -> None:
    """Compute the encoder's features of every sample once and write them to a store (resumable)."""
    from featcache.cli.parsing import parse_layers, parse_model_kwargs
    from featcache.data.layouts import SplitConfig
    from featcache.store.extract import extract as run_extract
    from featcache.store.extract_config import ExtractConfig

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
        split=SplitConfig(val_fraction, test_fraction, split_seed),
        skip_bad=skip_bad,
        skip_unpaired=skip_unpaired,
        strict=strict,
        tail_tokens=tail_tokens,
    )
    if workers is not None:
        cfg.workers = workers
    report = run_extract(cfg, ctx=context(device, ranks=True))
    if report.rank != 0:
        return
    verb = "resumed" if report.resumed else "wrote"
    out_console.print(
        f"{verb} {report.path}: {report.computed} of {report.n} samples computed in {report.seconds:.1f} s "
        f"({report.images_per_second:.1f} images/s)"
    )


def info(
    store: str = typer.Argument(..., help="A .zarr or .h5 store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Provenance, shapes, size on disk, completeness and the flip check ("cos") of a store."""
    import json

    from featcache.store.info import store_info

    found = store_info(store)
    if as_json:
        print(json.dumps(found.to_json(), indent=2))
        return
    out_console.print(info_table(found))


def verify(
    store: str = typer.Argument(..., help="A .zarr or .h5 store."),
    repair: bool = typer.Option(False, "--repair", help="Mark damaged blocks unwritten, for the same extract to redo."),
) -> None:
    """Read every chunk of a store and list the damaged blocks (missing, checksum mismatch, undecodable)."""
    from featcache.store.verify import verify_store

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
        table.add_row(d.array, d.rows, d.shown)
    out_console.print(table)
    if report.unrepairable or not report.repaired:
        raise FeatcacheError(report.fix())
    out_console.print(report.fix())


def info_table(found: StoreInfo) -> Table:
    """`featcache info`'s table of what a store holds."""
    record = found.record
    table = Table(title=found.path, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("complete", f"{record.complete} ({found.written}/{record.n} written)")
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in found.splits.items()))
    table.add_row("encoder", record.encoder.describe())
    table.add_row(
        "layers",
        f"block{'s' if len(found.layers) > 1 else ''} {', '.join(map(str, found.layers))} "
        f"of {record.depth} (concatenated on channels); patch {found.patch_size} px, "
        f"grid {'x'.join(map(str, record.grid))}",
    )
    table.add_row("features", f"{found.shapes['features']} {record.dtype}, views {', '.join(record.view_names)}")
    if found.tokens_bytes is not None:
        table.add_row(
            "tokens",
            f"{found.shapes['tokens']} {record.dtype}: the {record.n_tokens} tokens entering the last "
            f"{record.tail_tokens} blocks, {found.tokens_bytes / 2**20:.1f} MiB before compression",
        )
    table.add_row("images / masks", f"{found.shapes['images']} / {found.shapes['masks']}")
    table.add_row("on disk", f"{found.bytes_on_disk / 2**20:.1f} MiB ({record.backend})")
    table.add_row(
        "checksums",
        f"{record.checksum} on every chunk (`featcache verify` reads them all)"
        if record.checksum
        else f"none (store format {record.format_version}: extract again for checksums)",
    )
    dataset = record.dataset
    table.add_row("dataset", f"{record.dataset_root} ({dataset.layout}) {dataset.split_note}")
    if record.extraction:
        extraction = record.extraction
        table.add_row(
            "extraction", f"{extraction.seconds} s on {extraction.device} ({extraction.images_per_second} images/s)"
        )
    if found.left_out:
        shown = ", ".join(found.left_out[:5])
        table.add_row("left out", f"{len(found.left_out)} unreadable or unpaired files: {shown}")
    cos = found.flip_check_cos
    if cos is not None:
        views = ", ".join(f"{k} {v:.4f}" for k, v in cos.items() if k != "mean")
        table.add_row("flip check", f"cos {cos['mean']:.4f} (feature flip vs features of the flipped image: {views})")
    elif not record.complete:
        table.add_row("flip check", "after the extraction finishes (run the same `featcache extract` again)")
    else:
        table.add_row("flip check", "no flip views (extract with --views flips)")
    return table
