"""Commands on results: predict and evaluate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from featcache.cli.app import context
from featcache.core.runtime import err_console, out_console


def predict(
    *,
    run_dir: Path = typer.Argument(
        ..., help="A train-decoder output (a seed-K folder, or the sweep folder: best seed by validation loss)."
    ),
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    out: Path = typer.Option(..., "--out", help="Folder for <stem>_segmentation.png (and overlays/)."),
    truth: Path | None = typer.Option(
        None,
        help="Folder of truth masks (<stem>_segmentation.png): outlined in red, and each prediction scored against "
        "its truth (IoU, Dice, ...; OUT/scores.csv, OUT/scores.json).",
    ),
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
    from featcache.results.predict import PredictConfig
    from featcache.results.predict import predict as run_predict

    cfg = PredictConfig(run_dir=run_dir, images=images, out=out, truth=truth, encoder=encoder, overlays=overlays)
    predictions = run_predict(cfg, ctx=context(device))
    scored = truth is not None
    table = Table(title=f"{len(predictions)} masks in {out}" + (" scored against the truth" if scored else ""))
    table.add_column("image", overflow="fold")
    for name in ("lesion %", *(("IoU", "Dice") if scored else ())):
        table.add_column(name, justify="right", no_wrap=True)
    for p in predictions:
        table.add_row(
            p.image.name,
            f"{100 * p.lesion_fraction:.1f}",
            *((f"{p.scores['iou']:.4f}", f"{p.scores['dice']:.4f}") if scored else ()),
        )
    if scored:
        means = [sum(p.scores[k] for p in predictions) / len(predictions) for k in ("iou", "dice")]
        table.add_row("mean", "", *(f"{m:.4f}" for m in means), style="bold")
    out_console.print(table)
    if scored:
        err_console.print(f"per-image scores (study convention): {out / 'scores.csv'}, {out / 'scores.json'}")


def evaluate(
    *,
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
        False, "--predicted-only", help="Score the predicted images alone: the default, said explicitly."
    ),
    require_all: bool = typer.Option(
        False, "--all", help="Every truth mask must have its prediction (else refused, naming the missing ones)."
    ),
) -> None:
    """Score predicted masks against ISIC truth masks: the predicted images (the truth folder may hold more)."""
    from featcache.results.evaluate import EvaluateConfig, evaluate_dirs

    cfg = EvaluateConfig(
        pred_dir=pred_dir,
        truth_dir=truth_dir,
        convention=convention,
        threshold=threshold,
        predicted_only=predicted_only,
        require_all=require_all,
    )
    result = evaluate_dirs(cfg)
    if result.unpredicted:
        err_console.print(
            f"note: {result.unpredicted} truth masks in {truth_dir} have no prediction: scored the "
            f"{len(result.per_image)} predicted images (--all requires every one)",
            highlight=False,
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
