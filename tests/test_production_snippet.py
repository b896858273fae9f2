"""The README's plain-onnxruntime snippet runs as written and reproduces the Embedder."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2sd_deploy.deploy.export import ExportConfig, export_run
from s2sd_deploy.serving.embedder import Embedder

README = Path(__file__).resolve().parents[1] / "README.md"


def production_snippets() -> list[str]:
    section = README.read_text().split("## Use it in production", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_plain_snippet_uses_no_s2sd_import():
    plain = production_snippets()[1]
    assert "s2sd_deploy" not in plain
    imports = {m.split()[1].split(".")[0] for m in re.findall(r"^(?:import|from) \S+", plain, flags=re.M)}
    assert imports == {"json", "numpy", "onnxruntime", "PIL"}


@pytest.mark.parametrize("which", [0, 1])
def test_snippet_reproduces_embedder(which, trained_run, tmp_path, monkeypatch):
    export_run(ExportConfig(run=str(trained_run), out=str(tmp_path / "export"), verify_limit=16))
    shutil.copy(tmp_path / "export" / "model.onnx", tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    for name, shape in (("a.jpg", (45, 30, 3)), ("b.jpg", (32, 70, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(production_snippets()[which], str(README), "exec"), namespace)  # exactly the README's code
    expected = Embedder(tmp_path / "model.onnx").embed([tmp_path / "a.jpg", tmp_path / "b.jpg"])
    np.testing.assert_allclose(namespace["embeddings"], expected, atol=1e-6)
    assert os.getcwd() == str(tmp_path)
