"""TensorRT engine builder and runner, written to the TensorRT 10.x / 11.x Python API.

Verified on this project's machines only against ``tests/fake_tensorrt.py``, a stand-in of the calls below:
they have no NVIDIA GPU and ``pip install tensorrt`` cannot succeed on them. See README.md.

- 10.x: networks are always explicit-batch; fp16 is ``BuilderFlag.FP16`` on the fp32 network.
- 11.x: networks are always strongly typed and ``BuilderFlag.FP16`` is gone, so fp16 means building
  from a mixed-precision ONNX whose input and output stay fp32 (``model.fp16.onnx``).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ..atomic_files import atomic_path, write_json_atomic
from ..errors import S2SDError
from ..gpu import GPU_EXTRA, nvidia_gpu_visible
from ..metrics import parity


class TensorRTUnavailable(Exception):
    """TensorRT or an NVIDIA GPU is missing; the message says which."""


def load_tensorrt():
    """The ``tensorrt`` module, or TensorRTUnavailable saying what is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        raise TensorRTUnavailable(f"the tensorrt package is not installed ({GPU_EXTRA})") from None
    if not nvidia_gpu_visible():
        raise TensorRTUnavailable(
            f"no NVIDIA GPU is visible (TensorRT builds engines on the GPU it targets; {GPU_EXTRA})"
        )
    return trt


def _collecting_logger(trt):
    """A TensorRT logger that keeps warnings and errors, so a failed build can say why."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, message):
            if severity <= trt.ILogger.Severity.WARNING:
                self.messages.append(str(message))

    return CollectingLogger()


def supports_fp16_flag(trt) -> bool:
    """10.x has ``BuilderFlag.FP16``; 11.x removed it in favour of strongly typed networks."""
    return hasattr(trt.BuilderFlag, "FP16")


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    batch_min: int,
    batch_opt: int,
    batch_max: int,
    precision: str = "fp32",
    workspace_mb: int = 2048,
    timing_cache: Path | None = None,
    trt=None,
) -> dict:
    """Build and write a serialized engine for ``onnx_path``; returns the sidecar's contents.

    ``trt`` is the tensorrt module (found automatically; tests pass a stand-in).
    """
    trt = trt or load_tensorrt()
    logger = _collecting_logger(trt)
    source = _network_source(trt, onnx_path, precision)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch (10.x) / strongly typed (11.x) by default
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise S2SDError(f"TensorRT could not parse {source}: {'; '.join(errors) or 'no parser error recorded'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb * 2**20)
    if precision == "fp16" and supports_fp16_flag(trt):
        config.set_flag(trt.BuilderFlag.FP16)
    shapes = _add_profile(builder, network, config, batch_min, batch_opt, batch_max)
    cache = _load_timing_cache(config, timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:  # the builder reports failure by returning None, with the reason in its log
        raise S2SDError(
            f"TensorRT failed to build an engine from {source}: {' | '.join(logger.messages) or 'no message'}"
        )
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(plan))
    if timing_cache:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(cache.serialize()))
    sidecar = {
        "engine": str(engine_path),
        "onnx": str(source),
        "precision": precision,
        "profile": shapes,
        "workspace_mb": workspace_mb,
        "tensorrt_version": trt.__version__,
        "fp16_mode": "builder flag"
        if precision == "fp16" and supports_fp16_flag(trt)
        else ("strongly typed mixed-precision ONNX" if precision == "fp16" else "none"),
        "warnings": logger.messages,
    }
    write_json_atomic(engine_path.with_suffix(".json"), sidecar)
    return sidecar


def _network_source(trt, onnx_path: Path, precision: str) -> Path:
    """11.x builds fp16 only from an fp16 graph: write one beside the fp32 ONNX (I/O stay fp32)."""
    if precision != "fp16" or supports_fp16_flag(trt):
        return onnx_path
    fp16_path = onnx_path.with_name(onnx_path.stem + ".fp16.onnx")
    write_mixed_precision_onnx(onnx_path, fp16_path)
    return fp16_path


def write_mixed_precision_onnx(onnx_path: Path, out_path: Path) -> Path:
    """Convert weights and compute to fp16, keeping the fp32 input and output (onnxconverter-common)."""
    try:
        import onnx
        from onnxconverter_common import float16
    except ImportError:
        raise S2SDError(f"--precision fp16 with TensorRT 11 needs onnxconverter-common ({GPU_EXTRA})") from None
    model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save_model(model, str(tmp))
    return out_path


def _add_profile(builder, network, config, batch_min: int, batch_opt: int, batch_max: int) -> dict:
    """One optimisation profile: the batch axis ranges over min/opt/max, the rest is fixed."""
    profile = builder.create_optimization_profile()
    shapes = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = tuple(tensor.shape)[1:]
        if any(d < 0 for d in rest):
            raise S2SDError(
                f"input {tensor.name} has dynamic non-batch dimensions {tuple(tensor.shape)}; only the batch may vary"
            )
        triple = [(batch, *rest) for batch in (batch_min, batch_opt, batch_max)]
        profile.set_shape(tensor.name, *triple)
        shapes[tensor.name] = {"min": list(triple[0]), "opt": list(triple[1]), "max": list(triple[2])}
    config.add_optimization_profile(profile)
    return shapes


def _load_timing_cache(config, path: Path | None):
    """Reuse kernel timings across builds: the second build of a model is much faster."""
    data = path.read_bytes() if path and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


class EngineRunner:
    """Run a serialized engine on one GPU: ``EngineRunner("model.engine")(images) -> outputs``.

    Device buffers are torch CUDA tensors; inputs and outputs are bound by name
    (``set_tensor_address``) and the engine runs with ``execute_async_v3`` on a torch stream.
    """

    def __init__(self, engine_path: Path, trt=None):
        import torch

        self.trt = trt or load_tensorrt()
        self.torch = torch
        runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise S2SDError(f"{engine_path} is not a TensorRT engine for this TensorRT version and GPU")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = lambda n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT  # noqa: E731
        self.inputs = [n for n in names if is_input(n)]
        self.outputs = [n for n in names if not is_input(n)]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        stream = torch.cuda.current_stream()
        device_input = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.inputs[0], tuple(device_input.shape))
        self.context.set_tensor_address(self.inputs[0], device_input.data_ptr())
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            results[name] = torch.empty(shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(name, results[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise S2SDError("TensorRT execution failed")
        stream.synchronize()
        return {name: tensor.cpu().numpy() for name, tensor in results.items()}


def check_engine(engine_path: Path, onnx_path: Path, batch: int = 8, trt=None) -> dict:
    """Compare the engine's embeddings with ONNX Runtime's on random images (GPU machines only)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    shape = [batch, *session.get_inputs()[0].shape[1:]]
    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = session.run(None, {session.get_inputs()[0].name: images})
    engine_out = EngineRunner(engine_path, trt)(images)
    return {
        meta.name: parity(expected, engine_out[meta.name]) for meta, expected in zip(session.get_outputs(), reference)
    }
