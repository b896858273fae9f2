"""The tree stays clean under the lint and format rules of pyproject.toml (ruff, line length 120)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


def ruff(*args: str) -> subprocess.CompletedProcess:
    assert RUFF, "ruff is not installed: pip install -e '.[dev]'"
    return subprocess.run([RUFF, *args, "s2sd_deploy", "tests", "bench"], cwd=ROOT, capture_output=True, text=True)


def test_lint_is_clean():
    result = ruff("check", "--output-format", "concise")
    assert result.returncode == 0, result.stdout[-3000:]


def test_format_is_clean():
    result = ruff("format", "--check")
    assert result.returncode == 0, result.stdout[-3000:] + "\nrun: ruff format s2sd_deploy tests bench"
