"""Tables that fit the terminal: a `FittedTable` is laid out for the width it is printed at, leaving out its
optional columns (the least needed first, and saying which) until every number fits on one line. rich would
otherwise fold a number onto two lines ("0.511" over "8") or cut it."""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

#: The narrowest a column of words (`Column.words`) is counted at; its words fold onto more lines below that.
WORDS_WIDTH = 12


@dataclass
class Column:
    """A column: its header and cells. ``drop``: 0 for a column always shown, else its rank among the optional
    ones (the highest is left out first). ``words``: a column of words, which may wrap; numbers never do."""

    header: str
    cells: list[str]
    drop: int = 0
    words: bool = False
    justify: str = "right"

    def width(self) -> int:
        """Its width in terminal cells, padding excluded (a column of words counted at most `WORDS_WIDTH`)."""
        widest = max((cell_len(c) for c in (self.header, *self.cells)), default=0)
        return min(widest, WORDS_WIDTH) if self.words else widest


class FittedTable:
    """A rich renderable table of `Column`s, whose rows are the columns' cells side by side; ``bold``: the indices
    of rows shown bold (summary rows). Printed, it leaves out optional columns until it fits the width."""

    def __init__(self, columns: list[Column], *, title: str, caption: str = "", bold: tuple[int, ...] = ()) -> None:
        self.columns, self.title, self.caption, self.bold = columns, title, caption, bold

    def shown(self, width: int) -> tuple[list[Column], bool]:
        """The columns shown at ``width`` terminal cells (all, less the optional ones that do not fit), and
        whether the table must also drop its vertical borders to fit."""
        kept = list(self.columns)
        optional = sorted((c for c in kept if c.drop), key=lambda c: -c.drop)
        while _table_width(kept, compact=False) > width and optional:
            kept.remove(optional.pop(0))
        return kept, _table_width(kept, compact=False) > width

    def table(self, width: int) -> Table:
        """The rich `Table` laid out for ``width`` cells."""
        kept, compact = self.shown(width)
        left_out = [c.header for c in self.columns if c not in kept]
        caption = self.caption
        if left_out:
            caption = f"{', '.join(left_out)} left out to fit {width} columns (in the CSV files). {caption}".strip()
        table = Table(title=self.title, caption=caption or None)
        if compact:  # narrower still: no borders, one space between columns
            table = Table(
                title=self.title,
                caption=caption or None,
                box=box.SIMPLE_HEAD,
                show_edge=False,
                pad_edge=False,
                collapse_padding=True,
            )
        for column in kept:
            table.add_column(
                column.header,
                justify=column.justify,
                no_wrap=not column.words,
                overflow="fold" if column.words else "ellipsis",
            )
        n_rows = max((len(c.cells) for c in kept), default=0)
        for row in range(n_rows):
            cells = [c.cells[row] if row < len(c.cells) else "" for c in kept]
            table.add_row(*cells, style="bold" if row in self.bold else None)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        # Title and caption wrap at words even on a soft-wrapping console (featcache's), which would leave them
        # one long line for the terminal to break anywhere.
        yield from console.render(self.table(options.max_width), options.update(no_wrap=False, overflow="fold"))

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(options.max_width))


def _table_width(columns: list[Column], *, compact: bool) -> int:
    """The cells a table of ``columns`` takes: each column's width and padding (1 each side) and the borders; or
    ``compact``, without borders, two cells between columns."""
    if compact:
        return sum(c.width() for c in columns) + 2 * (len(columns) - 1)
    return sum(c.width() + 2 for c in columns) + len(columns) + 1
