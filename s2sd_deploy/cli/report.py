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
    force: Annotated[
        bool, typer.Option("--force", help="Replace a report or plot s2sd report wrote before (never another file).")
    ] = False,
) -> None:
    from ..output_folders import claim_output_file
    from ..tables import print_table
    from ..training.report import comparison_table, is_report_markdown, is_report_plot, load_rows, write_report

    for option, path, what, is_ours in (
        ("--markdown", markdown, "a report written by s2sd report", is_report_markdown),
        ("--plot", plot, "a plot written by s2sd report", is_report_plot),
    ):
        if path is not None:
            claim_output_file(path, option, what=what, is_ours=is_ours, force=force)
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
