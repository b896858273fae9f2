"""s2sd embed: folders in, .npz out, shards that concatenate to the whole."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from s2sd_deploy.cli import app
from s2sd_deploy.deploy.export import ExportConfig, export_run
from s2sd_deploy.serving.embedder import Embedder

runner = CliRunner()


@pytest.fixture(scope="module")
def collection(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    export_run(ExportConfig(run=str(trained_run), out=str(root / "export"), verify_limit=16))
    rng = np.random.default_rng(0)
    for i in range(11):
        folder = root / "images" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "images" / "notes.txt").write_text("not an image")
    return root


def _embed(collection, out, *extra):
    result = runner.invoke(
        app,
        [
            "embed",
            str(collection / "images"),
            "--model",
            str(collection / "export" / "model.onnx"),
            "--out",
            str(out),
            "--workers",
            "2",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return result, np.load(out, allow_pickle=False)


def test_embeds_a_folder_with_paths(collection, tmp_path):
    result, saved = _embed(collection, tmp_path / "all.npz")
    paths = list(saved["paths"])
    assert len(paths) == 11 and paths == sorted(paths) and all(p.endswith(".png") for p in paths)
    expected = Embedder(collection / "export" / "model.onnx").embed(paths)
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-6)
    assert "images/s" in result.output and str(saved["run_id"]) == "tiny"


def test_shards_concatenate_to_single_machine_result(collection, tmp_path):
    _, whole = _embed(collection, tmp_path / "all.npz")
    parts = [_embed(collection, tmp_path / f"part{k}.npz", "--shard", f"{k}/3")[1] for k in (1, 2, 3)]
    np.testing.assert_array_equal(np.concatenate([p["embeddings"] for p in parts]), whole["embeddings"])
    assert sum((list(p["paths"]) for p in parts), []) == list(whole["paths"])


def test_bad_shard_and_missing_input(collection, tmp_path):
    model = str(collection / "export" / "model.onnx")
    result = runner.invoke(
        app, ["embed", str(collection / "images"), "--model", model, "--out", str(tmp_path / "x.npz"), "--shard", "4/3"]
    )
    assert result.exit_code != 0 and "K must be between 1 and N" in str(result.exception)
    result = runner.invoke(app, ["embed", str(tmp_path / "nope"), "--model", model, "--out", str(tmp_path / "x.npz")])
    assert "input not found" in str(result.exception)
    assert not (tmp_path / "x.npz").exists()
