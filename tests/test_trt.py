"""The TensorRT builder's own logic, against tests/fake_tensorrt.py (a stand-in, not TensorRT)."""

from __future__ import annotations

import json

import pytest

from s2sd_deploy.deploy.tensorrt import TensorRTUnavailable, build_engine, load_tensorrt
from s2sd_deploy.errors import S2SDError

from .fake_tensorrt import make_fake_tensorrt


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"onnx-bytes")
    return path


def test_profile_workspace_and_timing_cache(onnx_file, tmp_path):
    trt = make_fake_tensorrt(10)
    (tmp_path / "timing.cache").write_bytes(b"old")
    sidecar = build_engine(
        onnx_file, tmp_path / "model.engine", 1, 16, 64, "fp32", 512, timing_cache=tmp_path / "timing.cache", trt=trt
    )
    assert trt.calls["profile"]["images"] == ((1, 3, 32, 32), (16, 3, 32, 32), (64, 3, 32, 32))
    assert trt.calls["workspace"][1] == 512 * 2**20 and trt.calls["profiles_added"] == 1
    assert trt.calls["timing_cache_in"] == b"old" and (tmp_path / "timing.cache").read_bytes() == b"cache:old"
    assert (tmp_path / "model.engine").read_bytes() == b"fake-plan"
    assert json.loads((tmp_path / "model.json").read_text()) == sidecar
    assert sidecar["profile"]["images"]["opt"] == [16, 3, 32, 32] and "flags" not in trt.calls


def test_fp16_on_10x_uses_the_builder_flag(onnx_file, tmp_path):
    trt = make_fake_tensorrt(10)
    sidecar = build_engine(onnx_file, tmp_path / "e.engine", 1, 8, 8, "fp16", trt=trt)
    assert trt.calls["flags"] == ["FP16"] and sidecar["fp16_mode"] == "builder flag"


def test_fp16_on_11x_builds_from_a_mixed_precision_onnx(trained_run, tmp_path):
    pytest.importorskip("onnxconverter_common", reason="onnxconverter-common is in the [gpu] extra")
    from s2sd_deploy.deploy.export import ExportConfig, export_run

    export_run(ExportConfig(run=str(trained_run), out=str(tmp_path), verify_limit=16))
    trt = make_fake_tensorrt(11)
    sidecar = build_engine(tmp_path / "model.onnx", tmp_path / "e.engine", 1, 8, 8, "fp16", trt=trt)
    assert "flags" not in trt.calls and sidecar["onnx"].endswith("model.fp16.onnx")
    import onnx

    model = onnx.load(sidecar["onnx"])
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_parser_errors_are_reported(onnx_file, tmp_path):
    with pytest.raises(S2SDError, match="could not parse .*unsupported attribute"):
        build_engine(onnx_file, tmp_path / "e.engine", 1, 1, 1, trt=make_fake_tensorrt(parse_ok=False))


def test_failed_build_reports_the_builder_log_and_writes_nothing(onnx_file, tmp_path):
    with pytest.raises(S2SDError, match="failed to build an engine .*Error Code 4"):
        build_engine(onnx_file, tmp_path / "e.engine", 1, 1, 1, trt=make_fake_tensorrt(build_ok=False))
    assert not (tmp_path / "e.engine").exists()


def test_dynamic_spatial_axes_are_refused(onnx_file, tmp_path):
    with pytest.raises(S2SDError, match="only the batch may vary"):
        build_engine(onnx_file, tmp_path / "e.engine", 1, 1, 1, trt=make_fake_tensorrt(input_shape=(-1, 3, -1, -1)))


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorrt(name, *args, **kwargs):
        if name == "tensorrt":
            raise ImportError("No module named 'tensorrt'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorrt)
    monkeypatch.setattr("importlib.import_module", lambda name: no_tensorrt(name))
    with pytest.raises(TensorRTUnavailable, match="pip install 's2sd-deploy\\[gpu\\]'"):
        load_tensorrt()
