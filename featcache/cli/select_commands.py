"""The selection command: select (which training images to label, from the store's cached features)."""

from __future__ import annotations

from pathlib import Path

import typer

from featcache.cli.app import context
from featcache.core.runtime import out_console


def select(
    *,
    store: str = typer.Argument(..., help="A complete store (featcache extract); its training split is chosen from."),
    budget: int = typer.Option(..., help="How many training images to choose (to label)."),
    strategy: str = typer.Option(
        "random",
        help="random (the sweeps' seeded subsets) | kcenter (k-center greedy) | typiclust (TypiClust) | "
        "probcover (ProbCover).",
    ),
    seed: int = typer.Option(0, help="The strategy's randomness: random's draw, k-center's start, k-means' start."),
    layers: str | None = typer.Option(
        None, help="The stored blocks compared, e.g. -1 or 9,12; default: every stored block."
    ),
    out: Path | None = typer.Option(
        None,
        help="FILE for the ids, one per line in the order chosen (default runs/<store>-select-<strategy>-n<budget>"
        "-seed<seed>.txt); FILE.json, FILE.pca.png and FILE.sheet.png are written beside it.",
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """Choose training images to label from the store's cached features (identity view, pooled per image)."""
    from featcache.cli.parsing import parse_layers
    from featcache.selection.command import SelectConfig, select_to_file, selection_table

    default = Path("runs") / f"{Path(store.rstrip('/')).stem}-select-{strategy}-n{budget}-seed{seed}.txt"
    cfg = SelectConfig(
        store=store,
        budget=budget,
        out=out or default,
        strategy=strategy,
        seed=seed,
        layers=parse_layers(layers) if layers else None,
    )
    report = select_to_file(cfg, ctx=context(device))
    out_console.print(selection_table(report))
    figures = ", ".join(str(f) for f in report.figures)
    out_console.print(f"ids in {report.out}; manifest {report.manifest_path}; figures {figures}")
