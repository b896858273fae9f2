"""Embedder: the evaluation preprocessing, every input kind, threads, and clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from s2sd_deploy.deploy.export import ExportConfig, export_run
from s2sd_deploy.errors import S2SDError
from s2sd_deploy.serving.embedder import Embedder
from s2sd_deploy.serving.images import shard_of
from s2sd_deploy.training.datasets import load_splits
from s2sd_deploy.training.loading import eval_transform
from s2sd_deploy.training.run_dir import RunDir


@pytest.fixture(scope="module")
def model_path(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runtime")
    export_run(ExportConfig(run=str(trained_run), out=str(out), verify_limit=16))
    return out / "model.onnx"


@pytest.fixture(scope="module")
def embedder(model_path):
    return Embedder(model_path, threads=1)


def _odd_images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((41, 29), (20, 64), (36, 36), (8, 8))
    ]


def test_preprocessing_equals_torchvision_eval_transform(embedder, trained_run):
    transform = eval_transform(RunDir.open(trained_run).config.preprocessing())
    for image in _odd_images():
        np.testing.assert_array_equal(embedder.preprocess(image), transform(image).numpy())


def test_embeddings_match_pytorch_on_test_images(embedder, trained_run):
    run = RunDir.open(trained_run)
    model, _ = run.load_model()
    _, test = load_splits("digits")
    images = test.sources[:20]
    with torch.no_grad():
        transform = eval_transform(run.config.preprocessing())
        expected = model.deployed()(torch.stack([transform(i.convert("RGB")) for i in images])).numpy()
    got = embedder.embed(images)
    assert got.shape == (20, 16) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5


def test_all_input_kinds_agree(embedder, tmp_path):
    images = _odd_images()[:3]
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    from_pil = embedder.embed(images)
    np.testing.assert_array_equal(embedder.embed(paths), from_pil)
    np.testing.assert_array_equal(embedder.embed([str(p) for p in paths]), from_pil)
    np.testing.assert_array_equal(embedder.embed([np.asarray(i) for i in images]), from_pil)
    np.testing.assert_array_equal(embedder.embed(np.asarray(images[0]))[0], from_pil[0])
    preprocessed = np.stack([embedder.preprocess(i) for i in images])
    np.testing.assert_allclose(embedder.embed(preprocessed), from_pil, atol=1e-6)
    assert embedder.embed([]).shape == (0, 16)


def test_batching_does_not_change_results(model_path):
    images = _odd_images() * 3
    np.testing.assert_allclose(
        Embedder(model_path, batch_size=5).embed(images), Embedder(model_path, batch_size=64).embed(images), atol=1e-6
    )


def test_eight_threads_get_single_threaded_results(embedder):
    rng = np.random.default_rng(1)
    batches = [
        [Image.fromarray(rng.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8)) for _ in range(3)] for k in range(16)
    ]
    expected = [embedder.embed(b) for b in batches]
    results: dict[int, np.ndarray] = {}

    def worker(index):
        for k in range(index, len(batches), 8):
            results[k] = embedder.embed(batches[k])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k, value in enumerate(expected):
        np.testing.assert_allclose(results[k], value, atol=1e-6)


def test_provider_is_reported(embedder):
    assert embedder.provider == "CPUExecutionProvider" and embedder.dim == 16
    with pytest.raises(S2SDError, match="not available"):
        Embedder(embedder.path, providers=["NoSuchExecutionProvider"])


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((2, 3, 31, 31), np.float32), "shape \\(2, 3, 31, 31\\) and dtype float32"),
        (np.zeros((10, 10, 3), np.float64), "dtype float64"),
        (np.zeros((10, 10), np.uint8), "expected uint8 RGB images"),
    ],
)
def test_wrong_arrays_are_named(embedder, bad, message):
    with pytest.raises(S2SDError, match=message):
        embedder.embed(bad)


def test_undecodable_image_is_named(embedder, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(S2SDError, match=f"cannot decode image {broken}"):
        embedder.embed([broken])


def test_files_that_are_not_s2sd_models(tmp_path, trained_run):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(S2SDError, match="not a loadable ONNX model"):
        Embedder(junk)
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(S2SDError, match="not an s2sd model"):
        Embedder(tmp_path / "plain.onnx")
    with pytest.raises(S2SDError, match="model file not found"):
        Embedder(tmp_path / "missing.onnx")


def test_shards_concatenate_to_the_whole():
    items = list(range(23))
    for n in (1, 3, 5, 23, 30):
        assert sum((shard_of(items, (k, n)) for k in range(1, n + 1)), []) == items
    with pytest.raises(S2SDError, match="K must be between 1 and N"):
        shard_of(items, (0, 4))


def test_gpu_machine_running_on_cpu_gets_a_warning(model_path, monkeypatch, caplog):
    monkeypatch.setattr("s2sd_deploy.serving.embedder.nvidia_gpu_visible", lambda: True)
    with caplog.at_level("WARNING", logger="s2sd_deploy.serving.embedder"):
        embedder = Embedder(model_path)
    assert embedder.provider == "CPUExecutionProvider"
    assert "GPU is visible but onnxruntime runs on the CPU" in caplog.text and "onnxruntime-gpu" in caplog.text
