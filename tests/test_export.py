"""s2sd export: a teacher-free, self-describing ONNX file that embeds like PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from s2sd_deploy.deploy.export import ExportConfig, export_run
from s2sd_deploy.errors import S2SDError
from s2sd_deploy.training.datasets import splits_for
from s2sd_deploy.training.run_dir import RunDir


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    report = export_run(ExportConfig(run=str(trained_run), out=str(out), with_teacher=False, triton=True))
    return out, report


def test_graph_interface_and_checker(exported):
    out, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["embeddings"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert not list(out.glob("*.data")), "weights must be inside the one file"


def test_no_teacher_or_criterion_weights(exported, trained_run):
    out, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    initializer_bytes = sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)
    trained, _ = RunDir.open(trained_run).load_model()
    # BatchNorm is folded into the convolutions: each BN's 4 vectors become one conv bias.
    batch_norms = [m for m in trained.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    folded = sum(4 * m.num_features * 4 for m in batch_norms) - sum(m.num_features * 4 for m in batch_norms)
    student_bytes = (
        sum(
            v.numel() * v.element_size()
            for k, v in trained.state_dict().items()
            if k.startswith(("backbone.", "student.")) and not k.endswith("num_batches_tracked")
        )
        - folded
    )
    smallest_teacher = min(sum(p.numel() * p.element_size() for p in head.parameters()) for head in trained.teachers)
    assert smallest_teacher > 100_000
    assert abs(initializer_bytes - student_bytes) < 1024  # a few graph constants (axes, eps) besides the weights
    names = " ".join(i.name for i in model.graph.initializer) + " ".join(n.name for n in model.graph.node)
    assert "teacher" not in names and "criterion" not in names


def test_metadata_describes_preprocessing_and_provenance(exported, trained_run):
    out, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    config = json.loads((trained_run / "config.json").read_text())
    assert meta["embedding_dim"] == "16" and meta["image_size"] == "32" and meta["resize_size"] == "36"
    assert meta["interpolation"] == "bilinear" and meta["channel_order"] == "RGB" and meta["normalized"] == "true"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["std"]) == [0.229, 0.224, 0.225]
    assert meta["run_id"] == "tiny" and meta["config_hash"] == config["config_hash"]
    assert meta["dataset"] == "digits" and meta["package_version"] == config["package_version"]
    assert "recall@1" in json.loads(meta["test_metrics"])
    # Shipped by default: the checkpoint training chose without the test classes (here the last epoch).
    assert (meta["checkpoint"], meta["checkpoint_epoch"]) == ("last.safetensors", "1")
    assert meta["selection_rule"].startswith("last epoch")


def test_parity_report_within_bounds(exported):
    out, report = exported
    figures = json.loads((out / "export_report.json").read_text())["parity"]["embeddings"]
    assert figures == report["parity"]["embeddings"]
    assert figures["max_abs_diff"] <= 1e-5 and figures["min_cosine"] >= 0.99999
    assert figures["recall@1_torch"] == figures["recall@1_onnxruntime"] and figures["images"] > 800
    assert figures["passed"]


def test_outputs_are_unit_norm_for_any_batch(exported):
    import onnxruntime as ort

    out, _ = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        embeddings = session.run(None, {"images": np.random.rand(batch, 3, 32, 32).astype(np.float32)})[0]
        assert embeddings.shape == (batch, 16) and embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_triton_repository_matches_onnx(exported):
    out, _ = exported
    config = (out / "triton" / "s2sd_embedder" / "config.pbtxt").read_text()
    assert (out / "triton" / "s2sd_embedder" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert 'name: "images"' in config and "dims: [3, 32, 32]" in config
    assert 'name: "embeddings"' in config and "dims: [16]" in config
    assert "dynamic_batching" in config and "max_batch_size: 128" in config and 'platform: "onnxruntime_onnx"' in config


def test_with_teacher_adds_verified_teacher_output(trained_run, tmp_path):
    report = export_run(ExportConfig(run=str(trained_run), out=str(tmp_path), with_teacher=True, verify_limit=64))
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["embeddings", "teacher_embeddings"]
    assert model.graph.output[1].type.tensor_type.shape.dim[1].dim_value == 128
    assert report["parity"]["teacher_embeddings"]["passed"] and report["metadata"]["teacher_dim"] == "128"


def test_broken_parity_fails_the_export(trained_run, tmp_path, monkeypatch):
    import s2sd_deploy.deploy.verify as verify

    original = verify.onnx_embeddings
    monkeypatch.setattr(verify, "onnx_embeddings", lambda path, loader: [e + 1e-3 for e in original(path, loader)])
    out = tmp_path / "export"
    with pytest.raises(S2SDError, match="disagree on embeddings: max \\|diff\\| 1.00e-03.*is unchanged"):
        export_run(ExportConfig(run=str(trained_run), out=str(out), verify_limit=32))
    assert not out.exists()  # a failed export is never where a verified one would be
    failed = tmp_path / ".export.failed"
    assert json.loads((failed / "export_report.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda run: (run / "last.safetensors").unlink(), "no shipped checkpoint"),
        (lambda run: (run / "summary.json").unlink(), "has not finished, so it has no shipped checkpoint"),
        (lambda run: (run / "config.json").write_text('{"format": "s2sd-run/0"}'), "incompatible version"),
    ],
)
def test_bad_runs_are_named(trained_run, tmp_path, change, message):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    change(run)
    with pytest.raises(S2SDError, match=message):
        export_run(ExportConfig(run=str(run), out=str(tmp_path / "out")))
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_cli_trt_without_tensorrt_writes_onnx_and_exits_3(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2sd_deploy.cli",
            "export",
            str(trained_run),
            "--engine",
            "trt",
            "--out",
            str(tmp_path),
            "--verify-limit",
            "32",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(error_lines) == 1
        and "tensorrt package is not installed" in error_lines[0]
        and "pip install" in error_lines[0]
    )
    assert (tmp_path / "model.onnx").is_file()
    assert json.loads((tmp_path / "export_report.json").read_text())["status"] == "onnx-only"


def test_cli_invalid_engine(trained_run):
    result = subprocess.run(
        [sys.executable, "-m", "s2sd_deploy.cli", "export", str(trained_run), "--engine", "tflite"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "choose one of: onnx, trt" in result.stderr


def test_forward_deployed_and_onnx_agree(trained_run, exported):
    import onnxruntime as ort

    from s2sd_deploy.training.evaluation import embed_split
    from s2sd_deploy.training.loading import eval_loader

    out, _ = exported
    run = RunDir.open(trained_run)
    model, _ = run.load_model()
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        training = model(images)
        student, teacher = model.deployed(with_teacher=True)(images)
    torch.testing.assert_close(student, training.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(teacher, training.teacher_embeddings[1], rtol=0, atol=0)  # the 128-d of 64/128
    torch.testing.assert_close(model.deployed()(images), student, rtol=0, atol=0)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], student.numpy(), atol=1e-5)
    # Evaluation embeds with the deployed forward; with teachers, every head in order.
    _, test = splits_for(run.config)
    test.sources, test.labels = test.sources[:12], test.labels[:12]
    students, teachers = embed_split(model, test, run.config, with_teachers=True)
    alone, none = embed_split(model, test, run.config)
    batch = next(iter(eval_loader(test, run.config)))[0]
    with torch.no_grad():
        expected = model(batch)
    np.testing.assert_array_equal(students, alone)
    assert none == [] and [t.shape for t in teachers] == [(12, 64), (12, 128)]
    np.testing.assert_allclose(teachers[1], expected.teacher_embeddings[1].numpy(), atol=1e-6)


def test_an_earlier_export_is_replaced_only_with_force_and_whole(trained_run, exported_model, tmp_path):
    import shutil

    from s2sd_deploy.serving.embedder import Embedder
    from s2sd_deploy.serving.interface import file_sha256

    out = tmp_path / "export"
    shutil.copytree(exported_model.parent, out)  # an earlier export, with its teacher output and no Triton folder
    with pytest.raises(S2SDError, match="already holds an s2sd export; pass --force to replace it"):
        export_run(ExportConfig(run=str(trained_run), out=str(out), verify_limit=8))
    report = export_run(ExportConfig(run=str(trained_run), out=str(out), verify_limit=8, triton=True, force=True))
    saved = json.loads((out / "export_report.json").read_text())
    assert saved["status"] == "ok" and saved["onnx"] == str(out / "model.onnx") == report["onnx"]
    assert saved["onnx_sha256"] == file_sha256(out / "model.onnx") and saved["format"] == "s2sd-export-report/1"
    assert Embedder(out / "model.onnx").teacher_dim is None  # the new export (student only), not a mix
    assert (out / "triton" / "s2sd_embedder" / "1" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or parked folder left beside it


def test_a_users_folder_and_the_run_itself_are_never_export_targets(trained_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(S2SDError, match="is a folder that is not an s2sd export and is not empty"):
        export_run(ExportConfig(run=str(trained_run), out=str(tmp_path / "mine"), force=True))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    with pytest.raises(S2SDError, match="holds the input"):
        export_run(ExportConfig(run=str(trained_run), out=str(trained_run), force=True))
    with pytest.raises(S2SDError, match="holds the input"):
        export_run(ExportConfig(run=str(trained_run), out=str(trained_run.parent), force=True))


def test_a_model_the_report_beside_it_does_not_describe_is_refused(exported_model, tmp_path):
    import shutil

    from s2sd_deploy.serving.embedder import Embedder

    shutil.copytree(exported_model.parent, tmp_path / "export")
    model = tmp_path / "export" / "model.onnx"
    Embedder(model)  # the pair as exported
    model.write_bytes(model.read_bytes() + b"\0")  # replaced by another file after the export
    with pytest.raises(S2SDError, match="is not the model .*export_report.json describes .*export the run again"):
        Embedder(model)


def test_folder_swap_falls_back_to_two_renames_and_recovers(tmp_path, monkeypatch):
    """Where renameat2 cannot exchange, the old version is parked; a process killed between the two renames
    leaves it parked, and the next write puts it back before anything else."""
    import s2sd_deploy.output_folders as folders

    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    staging = folders.staging_folder(target)
    (staging / "a").write_text("new")
    monkeypatch.setattr(folders, "_exchange", lambda a, b: False)
    folders.swap_in(staging, target)
    assert (target / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    os.replace(target, folders.sibling(target, folders.PREVIOUS))  # killed between the two renames
    fresh = folders.staging_folder(target)
    assert (target / "a").read_text() == "new" and fresh.is_dir() and not any(fresh.iterdir())
