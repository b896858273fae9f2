"""``s2sd report``: compare run directories — what differs in their configurations, and their metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic_files import write_text_atomic
from ..errors import S2SDError
from ..plots import pyplot, save_figure
from ..tables import markdown_table
from .run_dir import RunDir

MARKDOWN_TITLE = "# Runs compared"
PLOT_SOFTWARE = "s2sd report"  # the PNG's Software text chunk
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "recall@10", "recall@100", "nmi", "map@r")


@dataclass
class RunRow:
    name: str
    config: dict
    best: dict
    final: dict
    wall_time_s: float | None


def load_rows(run_dirs: list[str | Path]) -> list[RunRow]:
    """One row per finished run (a run without summary.json is reported as unfinished)."""
    if not run_dirs:
        raise S2SDError("name at least one run directory")
    rows = []
    for run_dir in run_dirs:
        run = RunDir.open(run_dir)
        summary = run.summary()
        rows.append(
            RunRow(
                run.path.name,
                run.config.to_dict(),
                _best_of(summary),
                summary.get("final", {}),
                summary.get("wall_time_s"),
            )
        )
    return rows


def _best_of(summary: dict) -> dict:
    record = summary.get("best_test_epoch_paper_protocol") or summary.get("best_validation_epoch") or {}
    return record.get("metrics", summary.get("best", {}))  # "best": run directories of format 1


def config_differences(rows: list[RunRow]) -> list[str]:
    """Configuration keys whose values are not the same in every run (output folders aside)."""
    keys = sorted(set().union(*(r.config for r in rows)) - {"out_dir", "run_name"})
    return [k for k in keys if len({repr(r.config.get(k)) for r in rows}) > 1]


def comparison_table(rows: list[RunRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: run name, the differing config values, then the final metrics."""
    differing = config_differences(rows)
    metrics = [m for m in METRICS if any(m in r.final for r in rows)]
    header = ["run", *differing, *[f"{m} (final)" for m in metrics], "best recall@1", "wall s"]
    cells = []
    for row in rows:
        cells.append(
            [
                row.name,
                *[str(row.config.get(k)) for k in differing],
                *[f"{row.final[m]:.4f}" if m in row.final else "" for m in metrics],
                f"{row.best.get('recall@1', float('nan')):.4f}",
                f"{row.wall_time_s:.0f}" if row.wall_time_s is not None else "",
            ]
        )
    return header, cells


def plot_runs(rows: list[RunRow], path: Path) -> None:
    """Grouped bars of final Recall@1, NMI and mAP@R per run."""
    import numpy as np

    plt = pyplot()
    metrics = [m for m in ("recall@1", "nmi", "map@r") if any(m in r.final for r in rows)]
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(rows) + 2), 4))
    positions = np.arange(len(rows))
    width = 0.8 / max(1, len(metrics))
    for i, metric in enumerate(metrics):
        axis.bar(positions + i * width, [r.final.get(metric, 0.0) for r in rows], width, label=metric)
    axis.set_xticks(
        positions + width * (len(metrics) - 1) / 2, [r.name for r in rows], rotation=30, ha="right", fontsize=8
    )
    axis.set(ylabel="final test metric", title="runs compared")
    axis.legend()
    save_figure(figure, path, software=PLOT_SOFTWARE)


def is_report_markdown(path: Path) -> bool:
    """Whether ``path`` is a Markdown report ``s2sd report`` wrote (it starts with its title)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == MARKDOWN_TITLE
    except (OSError, UnicodeDecodeError):
        return False


def is_report_plot(path: Path) -> bool:
    """Whether ``path`` is a PNG ``s2sd report`` wrote (its Software text chunk)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PLOT_SOFTWARE
    except (OSError, ValueError, SyntaxError):
        return False


def write_report(rows: list[RunRow], markdown_path: Path | None = None, plot_path: Path | None = None) -> str:
    """The Markdown report (written when a path is given) and, optionally, the plot."""
    header, cells = comparison_table(rows)
    text = MARKDOWN_TITLE + "\n\n" + markdown_table(header, cells) + "\n"
    if markdown_path:
        write_text_atomic(markdown_path, text)
    if plot_path:
        plot_runs(rows, plot_path)
    return text
