"""The ``s2sd`` command line: a thin Typer layer over the library.

Each command lives in its own module and calls library functions that tests call directly; they are
registered here, explicitly. Errors a user can fix are :class:`~s2sd_deploy.errors.S2SDError`: :func:`main`
prints them as one line and exits with their code (2 for usage errors, 3 for a missing GPU or package, 130
after Ctrl-C). A full disk, a quota or a read-only target (an :class:`OSError` ENOSPC, EDQUOT, EROFS, EACCES, ...)
is a user error too: one line naming the file, exit 2. Set ``S2SD_DEBUG=1`` to see the traceback instead.
Nothing heavy is imported before a command runs, so usage errors and ``--help`` answer at once.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from ..atomic_files import storage_message
from ..errors import S2SDError
from . import bench, embed, eval, export, index, report, search, train

# Installed by the `train` extra only: a serving install (`s2sd-deploy[serve]`) lacks them.
TRAINING_PACKAGES = {"torch", "torchvision", "onnx", "onnxscript", "safetensors", "sklearn", "scipy", "matplotlib"}

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


for module in (train, export, embed, index, search, eval, bench, report):
    module.register(app)


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
    try:
        app(args=argv, prog_name="s2sd")  # Typer prints usage errors with the usage line and exits 2
    except S2SDError as error:
        if os.environ.get("S2SD_DEBUG"):
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(error.exit_code)
    except ModuleNotFoundError as error:
        package = (error.name or "").split(".")[0]
        if package not in TRAINING_PACKAGES or os.environ.get("S2SD_DEBUG"):
            raise
        print(
            f"error: this command needs the training install ({package} is not installed): "
            f"pip install 's2sd-deploy[train,cpu]'",
            file=sys.stderr,
        )
        sys.exit(3)
    except OSError as error:
        message = storage_message(error)
        if message is None or os.environ.get("S2SD_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as exit_:
        if exit_.code == 130:  # Ctrl-C outside a command that explains where to resume
            print("interrupted", file=sys.stderr)
        raise
