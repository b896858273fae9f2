"""matplotlib without a display, and PNGs written atomically."""

from __future__ import annotations

from pathlib import Path

from .atomic_files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path, software: str | None = None) -> None:
    """Lay out, write ``figure`` as a PNG atomically, and free it. ``software`` goes into the PNG's Software text
    chunk, so the command that wrote it can recognise it as its own."""
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, metadata={"Software": software} if software else None)
    pyplot().close(figure)
