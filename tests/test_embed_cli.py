"""s2sd embed, through the console script: folders in, .npz out, shards that concatenate to the whole."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2sd_deploy.serving.embedder import Embedder

S2SD = str(Path(sys.executable).with_name("s2sd"))


@pytest.fixture(scope="module")
def collection(exported_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("collection")
    rng = np.random.default_rng(0)
    for i in range(11):
        folder = root / "images" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "images" / "notes.txt").write_text("not an image")
    return root


def _embed(collection, model, out, *extra, images=None):
    result = subprocess.run(
        [
            S2SD,
            "embed",
            str(images or collection / "images"),
            "--model",
            str(model),
            "--out",
            str(out),
            "--workers",
            "2",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result, np.load(out, allow_pickle=False)


def test_embeds_a_folder_with_paths(collection, exported_model, tmp_path):
    result, saved = _embed(collection, exported_model, tmp_path / "all.npz")
    paths = list(saved["paths"])
    assert len(paths) == 11 and paths == sorted(paths) and all(p.endswith(".png") for p in paths)
    expected = Embedder(exported_model).embed(paths)
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-6)
    assert "images/s" in result.stdout and str(saved["run_id"]) == "tiny" and len(saved["skipped"]) == 0
    assert (tmp_path / "all.npz").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_shards_concatenate_to_single_machine_result(collection, exported_model, tmp_path):
    _, whole = _embed(collection, exported_model, tmp_path / "all.npz")
    parts = [_embed(collection, exported_model, tmp_path / f"part{k}.npz", "--shard", f"{k}/3")[1] for k in (1, 2, 3)]
    np.testing.assert_array_equal(np.concatenate([p["embeddings"] for p in parts]), whole["embeddings"])
    assert sum((list(p["paths"]) for p in parts), []) == list(whole["paths"])


def test_bad_images_are_skipped_listed_and_counted(collection, exported_model, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(collection / "images", images)
    (images / "class0" / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "class1" / "empty.png").write_bytes(b"")
    result, saved = _embed(collection, exported_model, tmp_path / "x.npz", "--skip-bad-images", images=images)
    assert len(saved["paths"]) == 11 and sorted(Path(p).name for p in saved["skipped"]) == ["broken.jpg", "empty.png"]
    assert "skipped 2 that did not decode" in result.stdout
    assert sum(line.startswith("skipped ") for line in result.stderr.splitlines()) == 2
    expected = Embedder(exported_model).embed(list(saved["paths"]))
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-6)
