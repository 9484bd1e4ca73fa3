"""Rich progress bars on stderr: one builder for every command, and the per-run row of epochs."""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featcache.runtime import err_console

#: Called after each epoch with (epoch, epochs, mean training loss, mean validation loss, best epoch of run 0).
EpochCallback = Callable[[int, int, float, float, int], None]


def progress_bar(unit: str = "", disable: bool = False, remaining: bool = False) -> Progress:
    """Description, bar, done/total ``unit``, then the time elapsed (or, with ``remaining``, the time left)."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns.append(TimeRemainingColumn() if remaining else TimeElapsedColumn())
    return Progress(*columns, console=err_console, disable=disable)


def epoch_row(bar: Progress, label: str, total: int, completed: int = 0) -> EpochCallback:
    """A row of ``bar`` for one run's epochs; returns the callback `run_epochs` calls after each epoch.

    The row shows the latest losses and the best epoch so far, and goes when the run ends.
    """
    task = bar.add_task(label, total=total, completed=completed)

    def update(epoch: int, epochs: int, train_loss: float, val_loss: float, best_epoch: int) -> None:
        bar.update(
            task,
            completed=epoch,
            description=f"{label} · train {train_loss:.4g} · val {val_loss:.4g} (best {best_epoch})",
        )
        if epoch == epochs:
            bar.remove_task(task)

    return update
