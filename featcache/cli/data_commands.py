"""Commands of the input layer: synth."""

from __future__ import annotations

from pathlib import Path

import typer

from featcache.core.runtime import out_console


def synth(
    *,
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
    from featcache.data.synth import SynthConfig, synthesize

    size = None
    if image_size is not None:
        try:
            h, w = (int(v) for v in image_size.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"{image_size!r} is not HxW, e.g. 48x64", param_hint="--image-size") from None
        size = (h, w)
    cfg = SynthConfig(out=out, n_train=n_train, n_val=n_val, n_test=n_test, image_size=size, seed=seed)
    report = synthesize(cfg, progress=True)
    out_console.print(f"wrote {report.counts} images to {report.out}; contact sheet {report.contact_sheet}")
