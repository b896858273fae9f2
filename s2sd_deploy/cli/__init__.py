"""The ``s2sd`` command line: a thin Typer layer over the library.

Each command lives in its own module and calls library functions that tests call directly.
Errors a user can fix are :class:`~s2sd_deploy.errors.S2SDError`; :func:`main` prints them as one
line and exits with their code. Set ``S2SD_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..errors import S2SDError

app = typer.Typer(
    name="s2sd",
    help="Train S2SD embedding models, export the low-dimensional student, measure what it costs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Train S2SD embedding models, export the low-dimensional student, measure what it costs."""


def _register_commands() -> None:
    from . import train  # noqa: F401  (each module adds its command to `app`)

    for name in ("export", "embed", "bench", "report"):
        try:
            __import__(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise


def one_line(error: BaseException) -> str:
    """The user-facing line of an error (DataLoader workers wrap it in their traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(error):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith(type(error).__name__) else last
    return " ".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("s2sd_deploy").setLevel(logging.INFO)
    _register_commands()
    try:
        app(args=argv, standalone_mode=False)
    except S2SDError as error:
        if os.environ.get("S2SD_DEBUG"):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # click's usage errors and the like
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        raise
