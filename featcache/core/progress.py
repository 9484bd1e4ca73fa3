"""Rich progress bars on stderr: one builder for every command, and the per-run row of epochs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featcache.core.runtime import err_console


@dataclass(frozen=True)
class EpochEnd:
    """What the epoch loop says after each epoch: the epoch (1-based) of ``epochs``, the training and validation
    losses averaged over the runs trained together, and the best epoch so far of the first run; then each run's
    own losses (in the order the runs train) and the epoch's synchronised seconds of training steps, all runs
    together (what experiment tracking logs; None for an epoch restored from a resume state that lacks them)."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    best_epoch: int
    train_losses: tuple[float, ...] = ()
    val_losses: tuple[float, ...] = ()
    seconds: float | None = None


#: Called after each epoch; when a run resumes, first once for each epoch its resume state restored.
EpochCallback = Callable[[EpochEnd], None]


def progress_bar(unit: str = "", disable: bool = False, remaining: bool = False) -> Progress:
    """Description, bar, done/total ``unit``, then the time elapsed (or, with ``remaining``, the time left)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns.append(TimeRemainingColumn() if remaining else TimeElapsedColumn())
    return Progress(*columns, console=err_console, disable=disable)


def epoch_row(bar: Progress, label: str, total: int, *, completed: int = 0) -> EpochCallback:
    """A row of ``bar`` for one run's epochs; returns the callback `run_epochs` calls after each epoch.

    The row shows the latest losses and the best epoch so far, and goes when the run ends.
    """
    task = bar.add_task(label, total=total, completed=completed)

    def update(end: EpochEnd) -> None:
        bar.update(
            task,
            completed=end.epoch,
            description=f"{label} · train {end.train_loss:.4g} · val {end.val_loss:.4g} (best {end.best_epoch})",
        )
        if end.epoch == end.epochs:
            bar.remove_task(task)

    return update
