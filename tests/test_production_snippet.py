"""The README's production examples run as written: with the package, without it, and in a serving install
that has no torch at all (built from scratch here, as a serving image would be)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2sd_deploy.serving.embedder import Embedder

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def production_snippets() -> list[str]:
    section = README.read_text().split("## Use it in production", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def workdir(exported_model, tmp_path_factory):
    """model.onnx, a.jpg, b.jpg, query.jpg and photos-index, as the README's examples expect in their folder."""
    from s2sd_deploy.serving.index_config import IndexConfig
    from s2sd_deploy.serving.indexing import build_index

    folder = tmp_path_factory.mktemp("production")
    shutil.copy(exported_model, folder / "model.onnx")
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (45, 30, 3)), ("b.jpg", (32, 70, 3)), ("query.jpg", (40, 40, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    for i in range(12):
        (folder / "photos").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(folder / "photos" / f"{i}.png")
    build_index([folder / "photos"], folder / "model.onnx", folder / "photos-index", IndexConfig(index="flat"))
    return folder


def run_snippet(which: int, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(production_snippets()[which], str(README), "exec"), namespace)  # exactly the README's code
    return namespace


def test_plain_snippet_uses_no_s2sd_import():
    plain = production_snippets()[1]
    assert "s2sd_deploy" not in plain
    imports = {m.split()[1].split(".")[0] for m in re.findall(r"^(?:import|from) \S+", plain, flags=re.M)}
    assert imports == {"json", "numpy", "onnxruntime", "PIL"}


@pytest.mark.parametrize("which", [0, 1])
def test_embedding_snippets_reproduce_the_embedder(which, workdir, monkeypatch):
    namespace = run_snippet(which, workdir, monkeypatch)
    expected = Embedder(workdir / "model.onnx").embed([workdir / "a.jpg", workdir / "b.jpg"])
    np.testing.assert_allclose(namespace["embeddings"], expected, atol=1e-6)


def test_search_snippet_runs(workdir, monkeypatch):
    namespace = run_snippet(2, workdir, monkeypatch)
    result = namespace["result"]
    assert result.ids.shape == (1, 5) and all(p.endswith(".png") for p in result.paths[0])


@pytest.mark.slow
def test_serving_install_has_no_torch_and_runs_the_examples(workdir, tmp_path):
    """pip install '.[serve]' into a fresh virtual environment; run every production example there."""
    environment = tmp_path / "serve-env"
    venv.EnvBuilder(with_pip=True).create(environment)
    python = environment / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[serve]"], capture_output=True, text=True, timeout=900
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    names = {line.split("==")[0].lower() for line in installed.stdout.splitlines()}
    assert {"onnxruntime", "faiss-cpu", "numpy", "pillow", "s2sd-deploy"} <= names and not names & {
        "torch",
        "torchvision",
    }
    code = "\n".join(
        [
            "import sys",
            *production_snippets(),
            "print('torch loaded:', [m for m in ('torch', 'torchvision') if m in sys.modules])",
        ]
    )
    result = subprocess.run(
        [str(python), "-c", code],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch loaded: []" in result.stdout
    s2sd = environment / "bin" / "s2sd"
    searched = subprocess.run(
        [str(s2sd), "search", "photos-index", "query.jpg", "--k", "3", "--json"],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    assert searched.returncode == 0 and '"results"' in searched.stdout, searched.stderr
    refused = subprocess.run([str(s2sd), "train"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and refused.stderr.strip().splitlines() == [
        "error: this command needs the training install (torch is not installed): pip install 's2sd-deploy[train,cpu]'"
    ]
