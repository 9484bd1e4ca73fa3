"""`featcache select`: choose training images of a store to label, write their ids, the manifest and the figures
(`select_to_file`), and the table the command prints (`selection_table`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from featcache.core.context import Context
from featcache.core.errors import FeatcacheError, check_at_least, check_choice
from featcache.core.io import ensure_writable_dir
from featcache.selection.figures import SHEET_MAX, plot_contact_sheet, plot_selection_scatter
from featcache.selection.from_store import choose, training_candidates
from featcache.selection.ids_file import SelectionManifest, write_selection
from featcache.selection.strategies import STRATEGIES
from featcache.store.feature_store import FeatureStore

#: The table lists at most this many chosen images; the file holds them all.
TABLE_ROWS = 40


@dataclass
class SelectConfig:
    """What ``featcache select`` takes: choose ``budget`` images of the ``store``'s training split with
    ``strategy`` (seeded by ``seed``) from its identity-view features of blocks ``layers`` (None: every stored
    block), pooled per image, and write their ids to ``out``."""

    store: str
    budget: int
    out: Path
    strategy: str = "random"
    seed: int = 0
    layers: tuple[int, ...] | None = None

    def validate(self) -> None:
        """Refuse option values that can never be valid (a usage error), and an ``out`` that is a folder."""
        check_choice("--strategy", self.strategy, STRATEGIES)
        check_at_least("--budget", self.budget, 1)
        check_at_least("--seed", self.seed, 0)
        if Path(self.out).is_dir():
            raise FeatcacheError(f"--out {self.out} is a folder; give a file name for the ids, e.g. {self.out}/ids.txt")


def figure_path(out: Path, name: str) -> Path:
    """``FILE.NAME.png`` beside the selection file ``FILE``."""
    return out.with_name(f"{out.name}.{name}.png")


@dataclass
class SelectReport:
    """What `select_to_file` wrote: the ids file, its manifest, the two figures, and the lesion's share of each
    chosen image's mask (in the order chosen, 0..1)."""

    out: Path
    manifest_path: Path
    figures: list[Path]
    manifest: SelectionManifest
    lesion: list[float]


def select_to_file(cfg: SelectConfig, *, ctx: Context | None = None) -> SelectReport:
    """Choose the images (`choose`, distances on ``ctx.device``), then write ``cfg.out`` (one id per line, in the
    order chosen), ``OUT.json`` (`SelectionManifest`), ``OUT.pca.png`` (the training split on its first two
    principal components, the chosen marked) and ``OUT.sheet.png`` (the chosen images, masks outlined)."""
    cfg.validate()
    out = Path(cfg.out)
    ensure_writable_dir(out.parent, "--out", out)
    ctx = ctx or Context.resolve()
    with FeatureStore.open(cfg.store) as store:
        candidates = training_candidates(store, ctx.device, layers=cfg.layers)
        chosen = choose(candidates, strategy=cfg.strategy, budget=cfg.budget, seed=cfg.seed)
        masks = store.masks(chosen.rows)
        images = store.images(chosen.rows[:SHEET_MAX])
    picked = chosen.selection
    manifest = SelectionManifest(
        strategy=picked.strategy,
        budget=picked.budget,
        seed=picked.seed,
        nested=picked.nested,
        params=picked.params,
        store=str(cfg.store),
        candidates=len(candidates.rows),
        ids=chosen.ids,
        rows=[int(r) for r in chosen.rows],
        seconds={"read": round(candidates.seconds, 4), "select": round(chosen.seconds, 4)},
        device=str(ctx.device),
    )
    manifest_path = write_selection(out, manifest)
    what = f"{picked.strategy}, {picked.budget} of {len(candidates.rows)} training images, seed {picked.seed}"
    figures = [figure_path(out, "pca"), figure_path(out, "sheet")]
    plot_selection_scatter(candidates.x, list(picked.order), path=figures[0], title=f"{Path(cfg.store).name}: {what}")
    labels = [f"{rank}. {i}" for rank, i in enumerate(chosen.ids[:SHEET_MAX], start=1)]
    plot_contact_sheet(images, masks[:SHEET_MAX], labels, path=figures[1], title=f"{what}: masks outlined")
    lesion = masks.flatten(1).float().mean(1).tolist()
    return SelectReport(out, manifest_path, figures, manifest, lesion)


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def selection_table(report: SelectReport) -> Table:
    """The chosen images in the order chosen (at most `TABLE_ROWS`) with their lesion's share of the image; the
    caption gives the strategy's parameters and the seconds of reading and of choosing."""
    m = report.manifest
    table = Table(title=f"{m.strategy}: {m.budget} of {m.candidates} training images of {m.store} (seed {m.seed})")
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("lesion %", justify="right")
    for rank, (sample, share) in enumerate(zip(m.ids[:TABLE_ROWS], report.lesion, strict=False), start=1):
        table.add_row(str(rank), sample, f"{100 * share:.1f}")
    if m.budget > TABLE_ROWS:
        table.add_row("…", f"{m.budget - TABLE_ROWS} more in {report.out}", "")
    params = ", ".join(f"{k} {_shown(v)}" for k, v in m.params.items() if k not in ("pooling", "view", "layers"))
    nested = "nested across budgets" if m.nested else "not nested across budgets"
    table.caption = (
        f"{params + '; ' if params else ''}{nested}; features: {m.params['view']} view, block"
        f"{'s' if len(m.params['layers']) > 1 else ''} {','.join(map(str, m.params['layers']))}, "
        f"{m.params['pooling']}; read {m.seconds['read']:.2f} s, chosen in {m.seconds['select']:.2f} s on {m.device}"
    )
    return table
