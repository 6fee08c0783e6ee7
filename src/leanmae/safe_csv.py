"""CSV text that is safe to open in a spreadsheet, and Markdown text that shows names as written.

Why: a class folder or file named ``=HYPERLINK(...)`` or ``+cmd|...`` would be written verbatim into
predictions.csv or results/*.csv, and Excel or LibreOffice would run it as a formula when the file
is opened (CSV or formula injection). Text cells starting with = + - @ or a tab / carriage return
get a leading apostrophe, the spreadsheet convention for "this is text"; numbers, including
negative ones, stay as they are. ``unescape`` undoes it for leanmae's own readers. The same names
go into Markdown (the study's tables, a model's card): ``markdown_text`` keeps them text there.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape(cell: Any) -> Any:
    """``cell`` with an apostrophe in front if a spreadsheet would read it as a formula."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _is_number(cell):
        return "'" + cell
    return cell


def unescape(cell: str) -> str:
    """The text ``escape`` was given."""
    return (
        cell[1:]
        if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) and not _is_number(cell[1:])
        else cell
    )


def csv_text(header: Iterable[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A CSV file's text with every cell (header included) escaped."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([escape(c) for c in header])
    writer.writerows([escape(c) for c in row] for row in rows)
    return buffer.getvalue()


def markdown_text(value: Any) -> str:
    """``value`` as Markdown text (a table cell, a heading, a list item), shown as written and never run.

    Class and folder names come from the data: ``<script>`` in a name would run in a renderer that lets
    raw HTML through, a ``|`` would split the cell, a line break would end the table. So HTML's special
    characters become entities, backslashes and pipes are escaped, and line breaks become spaces.
    """
    text = html.escape(str(value), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())
