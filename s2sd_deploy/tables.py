"""The one home for tables: Markdown for result files, and console tables that fit the terminal."""

from __future__ import annotations


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A console table that fits the terminal: too wide for it, it is printed transposed (a row per column,
    a column per row), and cells that still do not fit wrap instead of being cut."""
    import shutil

    from rich.console import Console
    from rich.table import Table

    cells = [[str(cell) for cell in row] for row in rows]
    natural = sum(max(len(text) for text in column) + 3 for column in zip(header, *cells)) + 1
    if cells and natural > shutil.get_terminal_size().columns:
        columns = [list(column) for column in zip(header, *cells)]
        header, cells = columns[0], columns[1:]
    table = Table(title=title)
    for column in header:
        table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    Console().print(table)
