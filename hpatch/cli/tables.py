"""Tables that fit the console: columns of detail are dropped before anything is cut,
and nothing is ever cut: a long function name folds onto the next line, prose wraps.

Every command's tables go through ``fitted_table``, so an 80-column terminal and a
200-column pipe read the same way for each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table
from rich.text import Text

#: Border and padding a column adds to its cells' width in rich's default box.
_COLUMN_FRAME = 3


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, alignment, whether it is prose that wraps at spaces, and
    when it is dropped on a narrow console (0: never; higher goes first)."""

    header: str
    justify: Literal["left", "right", "center"] = "left"
    prose: bool = False
    drop: int = 0


def _width(cell: str) -> int:
    return max((Text.from_markup(line).cell_len for line in cell.split("\n")), default=0)


def fitted_table(
    title: str | None, columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> Table:
    """A table of ``rows`` (rich markup, one string per column) for a console ``width``
    columns wide: droppable columns go, highest ``drop`` first, until the rest fit."""
    natural = [
        max([_width(column.header), *(_width(row[index]) for row in rows)])
        for index, column in enumerate(columns)
    ]
    kept = list(range(len(columns)))

    def needed() -> int:
        # prose wraps, so it asks for no more than a third of the console
        return (
            1
            + sum(min(natural[i], width // 3) if columns[i].prose else natural[i] for i in kept)
            + _COLUMN_FRAME * len(kept)
        )

    for index in sorted(
        (i for i, c in enumerate(columns) if c.drop), key=lambda i: (-columns[i].drop, i)
    ):
        if needed() <= width:
            break
        kept.remove(index)
    table = Table(title=title, title_justify="left")
    for index in kept:
        column = columns[index]
        table.add_column(
            column.header,
            justify=column.justify,
            overflow="fold",
            # what is not prose keeps its width while it can: folded, never cut
            min_width=None if column.prose else min(natural[index], max(8, width // 3)),
        )
    for row in rows:
        table.add_row(*(row[index] for index in kept))
    return table
