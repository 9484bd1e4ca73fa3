"""featcache.core.progress: the progress bar's columns and the per-run row of epochs."""

from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn

from featcache.core.progress import EpochEnd, epoch_row, progress_bar
from featcache.core.runtime import err_console


def test_the_bar_shows_its_unit_and_elapsed_or_remaining_time_on_stderr():
    plain = progress_bar()
    assert isinstance(plain.columns[-1], TimeElapsedColumn) and len(plain.columns) == 4
    assert plain.console is err_console and not plain.disable
    bar = progress_bar("images", disable=True, remaining=True)
    assert isinstance(bar.columns[-1], TimeRemainingColumn) and bar.disable
    units = [c for c in bar.columns if isinstance(c, TextColumn) and c.text_format == "images"]
    assert len(units) == 1


def test_an_epoch_row_shows_the_latest_losses_and_goes_when_the_run_ends():
    bar = progress_bar(disable=True)
    update = epoch_row(bar, "C · 8 images", 3, completed=1)
    (task,) = bar.tasks
    assert (task.description, task.total, task.completed) == ("C · 8 images", 3, 1)
    update(EpochEnd(epoch=2, epochs=3, train_loss=0.123456, val_loss=0.5, best_epoch=2))
    (task,) = bar.tasks
    assert task.completed == 2
    assert task.description == "C · 8 images · train 0.1235 · val 0.5 (best 2)"
    update(EpochEnd(epoch=3, epochs=3, train_loss=0.1, val_loss=0.6, best_epoch=2))
    assert bar.tasks == []
