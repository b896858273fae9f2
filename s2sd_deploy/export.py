"""Export the student (never the teachers) to a self-describing ONNX model, and prove it.

The ONNX model has one input ``images`` (float32 [batch, 3, H, W], dynamic batch) and one
output ``embeddings`` (float32 [batch, d], L2-normalised inside the graph); with
``with_teacher`` a second output ``teacher_embeddings`` of the largest teacher is added for
re-ranking. Its ``metadata_props`` (all strings; lists and dicts as JSON) tell a client how to
preprocess and whether to trust the file:

==================  ===========================================================
``s2sd_format``     ``s2sd-onnx/1``
``embedding_dim``   d of ``embeddings`` (``teacher_dim`` for the teacher output)
``image_size``      side of the square crop fed to the network
``resize_size``     shorter side after resizing, before the centre crop
``interpolation``   ``bilinear`` (PIL's, as torchvision uses on PIL images)
``mean``, ``std``   per-channel normalisation of [0, 1] pixels, JSON lists
``channel_order``   ``RGB``; ``layout`` ``NCHW``; ``pixel_scale`` 255
``normalized``      ``true``: rows of the output have unit L2 norm
``input_name``...   ``images`` / ``embeddings`` / ``teacher_embeddings``
``run_id`` ...      source run, ``config_hash``, ``checkpoint``, ``package_version``,
                    ``dataset``, ``backbone`` and ``test_metrics`` (JSON)
==================  ===========================================================
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import atomic_path, read_json, write_json_atomic
from .data import LabelledImages, eval_transform, splits_for, preprocessing
from .errors import MissingDependencyError, S2SDError
from .metrics import nearest_neighbours, recall_at_k
from .model import EmbeddingModel
from .rundir import load_trained_model
from .runtime import ONNX_FORMAT

log = logging.getLogger(__name__)

INPUT, OUTPUT, TEACHER_OUTPUT = "images", "embeddings", "teacher_embeddings"
MAX_ABS_DIFF, MIN_COSINE = 1e-5, 0.99999  # fp32 parity bounds


@dataclass
class ExportConfig:
    """Options of ``s2sd export``; saved in ``export_report.json``."""

    run: str
    engine: str = "onnx"  # onnx | trt
    out: str | None = None  # default: <run>/export
    checkpoint: str = "shipped"  # shipped (chosen without the test classes) | best | last | a file of the run
    opset: int = 18  # 17+ needed; 18 is what torch 2.14's dynamo exporter targets
    batch_min: int = 1  # TensorRT optimisation profile
    batch_opt: int = 32
    batch_max: int = 128
    precision: str = "fp32"  # fp32 | fp16 (TensorRT engine)
    with_teacher: bool = False
    triton: bool = False
    workspace_mb: int = 2048  # TensorRT builder workspace limit
    verify_limit: int | None = None  # verify on the first N test images only (None: all)

    def validate(self) -> None:
        if self.engine not in ("onnx", "trt"):
            raise S2SDError(f"invalid --engine {self.engine!r}; choose one of: onnx, trt")
        if self.precision not in ("fp32", "fp16"):
            raise S2SDError(f"invalid --precision {self.precision!r}; choose one of: fp32, fp16")
        if self.opset < 17:
            raise S2SDError(f"--opset {self.opset} is too old; use 17 or newer")
        if not 1 <= self.batch_min <= self.batch_opt <= self.batch_max:
            raise S2SDError(
                f"batch profile must satisfy 1 <= --batch-min <= --batch-opt <= --batch-max, got "
                f"{self.batch_min}/{self.batch_opt}/{self.batch_max}"
            )


class StudentGraph(nn.Module):
    """What ships: backbone + student head (+ optionally the largest teacher), nothing else."""

    def __init__(self, model: EmbeddingModel, with_teacher: bool = False):
        super().__init__()
        self.backbone, self.student = model.backbone, model.student
        self.pool_aggregation = model.pool_aggregation
        self.teacher = None
        if with_teacher:
            if not len(model.teachers):
                raise S2SDError("--with-teacher: this run has no teacher heads (it was trained with --no-s2sd)")
            self.teacher = max(model.teachers, key=lambda head: head[-1].out_features)

    def forward(self, images: torch.Tensor):
        feature_map = self.backbone(images)  # (B, F, h, w)
        pooled = feature_map.mean(dim=(2, 3))  # (B, F)
        embeddings = F.normalize(self.student(pooled), dim=-1)  # (B, d)
        if self.teacher is None:
            return embeddings
        teacher_input = pooled + feature_map.amax(dim=(2, 3)) if self.pool_aggregation else pooled
        return embeddings, F.normalize(self.teacher(teacher_input), dim=-1)


def export_onnx(model: EmbeddingModel, path, image_size: int, opset: int = 18, with_teacher: bool = False,
                metadata: dict[str, str] | None = None) -> Path:
    """Write the student as one self-contained, checked ONNX file (atomically); returns its path."""
    import onnx

    graph = StudentGraph(model, with_teacher).eval()
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        graph(example)  # warm-up: fails here, readably, if the model cannot run at this size
    outputs = [OUTPUT, TEACHER_OUTPUT] if with_teacher else [OUTPUT]
    batch = torch.export.Dim("batch", min=1, max=65536)
    # optimize=True folds BatchNorm into the convolutions: ONNX Runtime ran resnet50 1.6x faster than
    # on the unfolded graph here (28.6 vs 45.0 ms at batch 1), whose decomposed BatchNorm it does not fuse.
    program = torch.onnx.export(
        graph, (example,), dynamo=True, input_names=[INPUT], output_names=outputs,
        dynamic_shapes={"images": {0: batch}}, opset_version=opset, external_data=False, optimize=True, verbose=False,
    )
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=str(value))
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def onnx_metadata(run, preprocessing_spec: dict, embed_dim: int, teacher_dim: int | None, selection: dict) -> dict[str, str]:
    """The metadata_props of an exported run (see the module docstring)."""
    metadata = {
        "s2sd_format": ONNX_FORMAT,
        "embedding_dim": str(embed_dim),
        **{k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in preprocessing_spec.items()},
        "normalized": "true",
        "input_name": INPUT,
        "output_name": OUTPUT,
        "run_id": run.run_id,
        "config_hash": run.meta.get("config_hash", ""),
        "checkpoint": selection["checkpoint"],
        "checkpoint_epoch": str(selection.get("epoch")),
        "selection_rule": selection["rule"],
        "package_version": __version__,
        "dataset": run.config.dataset,
        "backbone": run.config.backbone,
        "test_metrics": json.dumps(test_metrics_of(run, selection)),
    }
    if teacher_dim:
        metadata.update(teacher_dim=str(teacher_dim), teacher_output_name=TEACHER_OUTPUT)
    return metadata


def test_metrics_of(run, selection: dict) -> dict:
    """Test-split metrics of the exported checkpoint's epoch, where the run measured them ({} otherwise)."""
    if "test_metrics" in selection:  # a validation run's shipped checkpoint, evaluated once on test
        return selection["test_metrics"]
    summary_path = run.path / "summary.json"
    if summary_path.is_file() and read_json(summary_path).get("evaluated_on") == "validation":
        return {}
    metrics_path = run.path / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.is_file() else []
    row = next((r for r in rows if r["epoch"] == selection.get("epoch") and "recall@1" in r), {})
    return {k: v for k, v in row.items() if k.startswith(("recall@", "nmi", "map@"))}


# --- proof ------------------------------------------------------------------------------------
@torch.no_grad()
def _torch_embeddings(graph: StudentGraph, loader) -> list[np.ndarray]:
    outputs = [[], []]
    for images, _ in loader:
        result = graph(images)
        for store, tensor in zip(outputs, result if isinstance(result, tuple) else (result,)):
            store.append(tensor.numpy())
    return [np.concatenate(o) for o in outputs if o]


def _onnx_embeddings(onnx_path: Path, loader) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [[] for _ in session.get_outputs()]
    for images, _ in loader:
        for store, array in zip(outputs, session.run(None, {INPUT: images.numpy()})):
            store.append(array)
    return [np.concatenate(o) for o in outputs]


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """Max abs difference, min row cosine and Recall@1 of both embedding sets."""
    cosine = (reference * candidate).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
    recall = [recall_at_k(labels[nearest_neighbours(e, 1)], labels, [1])[1] for e in (reference, candidate)]
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()),
        "min_cosine": float(cosine.min()),
        "recall@1_torch": recall[0],
        "recall@1_onnxruntime": recall[1],
        "images": int(len(labels)),
    }


def verify_onnx(model: EmbeddingModel, onnx_path: Path, run, with_teacher: bool = False, limit: int | None = None) -> dict:
    """Embed the run's test split with PyTorch and ONNX Runtime (CPU); check the fp32 bounds."""
    _, test = splits_for(run.config)
    if limit:
        test.sources, test.labels = test.sources[:limit], test.labels[:limit]
    dataset = LabelledImages(test, eval_transform(run.config))
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=run.config.num_workers)
    reference = _torch_embeddings(StudentGraph(model, with_teacher).eval(), loader)
    candidate = _onnx_embeddings(onnx_path, loader)
    names = [OUTPUT, TEACHER_OUTPUT][: len(reference)]
    report = {name: compare_embeddings(r, c, test.labels) for name, r, c in zip(names, reference, candidate)}
    for name, figures in report.items():
        figures["passed"] = (figures["max_abs_diff"] <= MAX_ABS_DIFF and figures["min_cosine"] >= MIN_COSINE
                             and figures["recall@1_torch"] == figures["recall@1_onnxruntime"])
    return report


def _parity_failure(report: dict) -> str | None:
    for name, figures in report.items():
        if not figures["passed"]:
            return (f"ONNX Runtime and PyTorch disagree on {name}: max |diff| {figures['max_abs_diff']:.2e} "
                    f"(bound {MAX_ABS_DIFF}), min cosine {figures['min_cosine']:.7f} (bound {MIN_COSINE}), Recall@1 "
                    f"{figures['recall@1_torch']:.4f} vs {figures['recall@1_onnxruntime']:.4f}")
    return None


# --- the command --------------------------------------------------------------------------------
def export_run(cfg: ExportConfig) -> dict:
    """``s2sd export``: write ``model.onnx`` (+ engine, Triton repository) and ``export_report.json``.

    Raises S2SDError when a parity bound breaks, and MissingDependencyError (exit 3) after writing
    the verified ONNX when a TensorRT engine was asked for on a machine that cannot build one.
    """
    cfg.validate()
    model, run, selection = load_trained_model(cfg.run, cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    teacher_dim = max((h[-1].out_features for h in model.teachers), default=None) if cfg.with_teacher else None
    log.info("exporting %s (epoch %s): %s", selection["checkpoint"], selection.get("epoch"), selection["rule"])
    metadata = onnx_metadata(run, preprocessing(run.config), model.embed_dim, teacher_dim, selection)
    onnx_path = export_onnx(model, out / "model.onnx", run.config.image_size, cfg.opset, cfg.with_teacher, metadata)
    parity = verify_onnx(model, onnx_path, run, cfg.with_teacher, cfg.verify_limit)
    report = {
        "config": asdict(cfg), "run_id": run.run_id, "onnx": str(onnx_path), "package_version": __version__,
        "checkpoint": selection,
        "onnx_bytes": onnx_path.stat().st_size, "metadata": metadata, "parity": parity,
    }
    failure = _parity_failure(parity)
    if failure:
        write_json_atomic(out / "export_report.json", {**report, "status": "failed"})
        raise S2SDError(failure + f"; see {out / 'export_report.json'}")
    if cfg.triton:
        from .triton import write_triton_repository

        report["triton"] = str(write_triton_repository(onnx_path, out / "triton", cfg.batch_max))
    if cfg.engine == "trt":
        report["tensorrt"] = _build_tensorrt(cfg, onnx_path, out, report)
    write_json_atomic(out / "export_report.json", {**report, "status": "ok"})
    return report


def _build_tensorrt(cfg: ExportConfig, onnx_path: Path, out: Path, report: dict) -> dict:
    from .trt import TensorRTUnavailable, build_engine, check_engine

    try:
        engine = build_engine(onnx_path, out / "model.engine", cfg.batch_min, cfg.batch_opt, cfg.batch_max,
                              cfg.precision, cfg.workspace_mb, timing_cache=out / "timing.cache")
    except TensorRTUnavailable as missing:
        write_json_atomic(out / "export_report.json", {**report, "status": "onnx-only", "tensorrt": str(missing)})
        raise MissingDependencyError(
            f"{onnx_path} is written and verified, but no TensorRT engine was built: {missing}"
        ) from None
    engine["check"] = check_engine(out / "model.engine", onnx_path)
    return engine

