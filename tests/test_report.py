"""s2sd report: configuration differences and metrics of several runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from s2sd_deploy.cli import app
from s2sd_deploy.errors import S2SDError
from s2sd_deploy.training.report import comparison_table, config_differences, load_rows


@pytest.fixture
def two_runs(trained_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    meta = json.loads((other / "config.json").read_text())
    meta["config"].update(seed=5, distill_weight=10.0)
    (other / "config.json").write_text(json.dumps(meta))
    summary = json.loads((other / "summary.json").read_text())
    summary["final"]["recall@1"] = 0.5
    (other / "summary.json").write_text(json.dumps(summary))
    return [trained_run, other]


def test_differences_and_metrics(two_runs):
    rows = load_rows(two_runs)
    assert config_differences(rows) == ["distill_weight", "seed"]
    header, cells = comparison_table(rows)
    assert header[:3] == ["run", "distill_weight", "seed"] and "recall@1 (final)" in header
    assert cells[1][1:3] == ["10.0", "5"] and cells[1][header.index("recall@1 (final)")] == "0.5000"


def test_cli_writes_markdown_and_plot(two_runs, tmp_path):
    result = CliRunner().invoke(
        app, ["report", *map(str, two_runs), "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")]
    )
    assert result.exit_code == 0, result.output
    assert "| run | distill_weight | seed |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").stat().st_size > 0 and "runs compared" in result.output


def test_unfinished_run_is_named(two_runs):
    (two_runs[1] / "summary.json").unlink()
    with pytest.raises(S2SDError, match="has no summary.json"):
        load_rows(two_runs)


def test_console_table_fits_80_columns(two_runs):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("s2sd")), "report", *map(str, two_runs)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "0.5000" in result.stdout  # every value is there, wrapped rather than cut


def test_report_reads_runs_without_torch(two_runs, tmp_path):
    """s2sd report only reads JSON: it runs where torch is not installed (a serving machine)."""
    args = ["report", *map(str, two_runs), "--markdown", str(tmp_path / "r.md")]
    code = (
        "import sys\nfrom s2sd_deploy.cli import main\n"
        f"try:\n    main({args!r})\n"
        "except SystemExit as exit_:\n    assert not exit_.code, exit_.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("no torch") and (tmp_path / "r.md").is_file()


def test_report_outputs_are_never_a_users_file(two_runs, tmp_path):
    (tmp_path / "notes.md").write_text("mine")
    result = CliRunner().invoke(app, ["report", *map(str, two_runs), "--markdown", str(tmp_path / "notes.md")])
    assert result.exit_code != 0 and (tmp_path / "notes.md").read_text() == "mine"
    first = CliRunner().invoke(
        app, ["report", *map(str, two_runs), "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")]
    )
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["report", *map(str, two_runs), "--markdown", str(tmp_path / "r.md")])
    assert again.exit_code != 0 and "pass --force" in str(again.exception)
    forced = [*map(str, two_runs), "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png"), "--force"]
    assert CliRunner().invoke(app, ["report", *forced]).exit_code == 0
