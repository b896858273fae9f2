"""The package's import rules (README, Development), checked on the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "s2sd_deploy"
SHARED = {
    "errors",
    "atomic_files",
    "output_folders",
    "metrics",
    "plots",
    "tables",
    "timing",
    "gpu",
}  # top-level modules
# What each part of the package may import from the package (besides the shared modules), and which
# third-party modules it must never import.
RULES = {
    "root": ({"shared", "serving"}, {"torch", "torchvision"}),  # s2sd_deploy/__init__.py re-exports the Embedder
    "shared": ({"shared"}, {"torch", "torchvision"}),
    "serving": ({"shared", "serving"}, {"torch", "torchvision"}),
    "training": ({"shared", "serving", "training"}, set()),
    "deploy": ({"shared", "serving", "training", "deploy"}, set()),
    "bench": ({"shared", "serving", "training", "deploy", "bench"}, set()),
    "cli": ({"shared", "serving", "training", "deploy", "bench", "cli"}, set()),
}


def part_of(module: str) -> str:
    """``s2sd_deploy.serving.embedder`` -> ``serving``; top-level modules are ``shared``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    return "shared" if parts[1] in SHARED else parts[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        found.append((".".join(p for p in relative.parts if p != "__init__"), path))
    return found


def imports_of(module: str, path: Path) -> set[str]:
    """Absolute names of everything a module imports (also inside functions)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("module,path", modules(), ids=lambda value: str(value) if isinstance(value, str) else "")
def test_import_rules(module, path):
    allowed, forbidden = RULES[part_of(module)]
    for name in imports_of(module, path):
        if name.startswith("s2sd_deploy."):
            target = part_of(name)
            if target in RULES:  # not a symbol of the package root such as __version__
                assert target in allowed, f"{module} ({part_of(module)}) must not import {name} ({target})"
        assert name.split(".")[0] not in forbidden, f"{module} must not import {name}"


def test_serving_loads_neither_torch_nor_torchvision():
    serving = [m for m, _ in modules() if part_of(m) in ("serving", "shared", "root")]
    code = (
        "import importlib, sys\n"
        f"for name in {serving!r}: importlib.import_module(name)\n"
        "from s2sd_deploy import Embedder\n"
        "loaded = sorted(m for m in ('torch', 'torchvision') if m in sys.modules)\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"serving imported {result.stdout.strip()}"


def test_cli_answers_usage_without_torch():
    code = (
        "import sys\nfrom s2sd_deploy.cli import app\n"
        "print(','.join(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
