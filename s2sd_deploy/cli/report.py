"""``s2sd report``: compare run directories in a table (console, Markdown) and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run directories written by `s2sd train`.")],
    markdown: Annotated[
        Optional[Path], typer.Option(help="Also write the table as Markdown to this file.", show_default=False)
    ] = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="Also write a bar plot of the final metrics (PNG).", show_default=False)
    ] = None,
) -> None:
    from ..atomic_files import check_output_file
    from ..tables import print_table
    from ..training.report import comparison_table, load_rows, write_report

    for option, path in (("--markdown", markdown), ("--plot", plot)):
        if path is not None:
            check_output_file(path, option)
    rows = load_rows(runs)
    write_report(rows, markdown, plot)
    print_table("runs compared (final-epoch metrics)", *comparison_table(rows))


def register(app: typer.Typer) -> None:
    app.command(
        help="Compare runs: the configuration values that differ between them, and their test metrics.\n\n"
        "Examples:\n\n"
        "  s2sd report runs/glyphs-msdfa-* runs/glyphs-baseline-*\n\n"
        "  s2sd report runs/* --markdown report.md --plot report.png",
    )(report)
