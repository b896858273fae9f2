"""A Triton Inference Server model repository for an exported ONNX model.

Layout: ``<repo>/<name>/config.pbtxt`` and ``<repo>/<name>/1/model.onnx``. Names, types and
shapes in config.pbtxt are read from the ONNX file itself, so the two cannot disagree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic_files import atomic_path, write_text_atomic

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64", 6: "TYPE_INT32", 2: "TYPE_UINT8"}


def _tensor_spec(value_info) -> tuple[str, str, list[int]]:
    """(name, Triton data type, dims without the batch axis) of an ONNX graph input or output."""
    tensor = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim][1:]
    return value_info.name, ONNX_TO_TRITON[tensor.elem_type], dims


def triton_config(onnx_path: Path, name: str, max_batch_size: int) -> str:
    """config.pbtxt text for an ONNX model with a leading dynamic batch axis."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph

    def block(kind: str, items) -> str:
        entries = []
        for value_info in items:
            tensor_name, data_type, dims = _tensor_spec(value_info)
            entries.append(f'  {{\n    name: "{tensor_name}"\n    data_type: {data_type}\n    dims: {dims}\n  }}')
        return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        + block("input", graph.input)
        + block("output", graph.output)
        + "dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n"
        + "instance_group [\n  {\n    count: 1\n    kind: KIND_AUTO\n  }\n]\n"
    )


def write_triton_repository(
    onnx_path: Path, repository: Path, max_batch_size: int = 128, name: str = "s2sd_embedder"
) -> Path:
    """Write ``repository/name/{config.pbtxt, 1/model.onnx}``; returns the model folder."""
    model_dir = Path(repository) / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(model_dir / "1" / "model.onnx") as tmp:
        shutil.copyfile(onnx_path, tmp)
    write_text_atomic(model_dir / "config.pbtxt", triton_config(onnx_path, name, max_batch_size))
    return model_dir
