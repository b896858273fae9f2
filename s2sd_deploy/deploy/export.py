"""Export the deployed model (student, optionally its largest teacher; never the rest) to a
self-describing ONNX file, and prove it (:mod:`.verify`). The file's interface and metadata keys are
described in :mod:`s2sd_deploy.serving.interface`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..atomic_files import atomic_path, write_json_atomic
from ..errors import MissingDependencyError, S2SDError
from ..serving.interface import INPUT, ONNX_FORMAT, OUTPUT, TEACHER_OUTPUT
from ..training.model import DeployedModel
from ..training.run_dir import RunDir
from .config import ExportConfig
from .verify import parity_failure, verify_onnx

log = logging.getLogger(__name__)


def export_onnx(
    deployed: DeployedModel, path, image_size: int, opset: int = 18, metadata: dict[str, str] | None = None
) -> Path:
    """Write the deployed model as one self-contained, checked ONNX file (atomically); returns its path."""
    import onnx

    graph = deployed.eval()
    example = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        graph(example)  # warm-up: fails here, readably, if the model cannot run at this size
    outputs = [OUTPUT] if deployed.teacher is None else [OUTPUT, TEACHER_OUTPUT]
    batch = torch.export.Dim("batch", min=1, max=65536)
    # optimize=True folds BatchNorm into the convolutions: ONNX Runtime does not fuse the decomposed BatchNorm
    # of an unfolded graph, and ran resnet50 much slower on it (README, "Retrieval cost").
    program = torch.onnx.export(
        graph,
        (example,),
        dynamo=True,
        input_names=[INPUT],
        output_names=outputs,
        dynamic_shapes={"images": {0: batch}},
        opset_version=opset,
        external_data=False,
        optimize=True,
        verbose=False,
    )
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=str(value))
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
    return path


def onnx_metadata(run: RunDir, embed_dim: int, teacher_dim: int | None, selection: dict) -> dict[str, str]:
    """The metadata_props of an exported run (see :mod:`s2sd_deploy.serving.interface`)."""
    metadata = {
        "s2sd_format": ONNX_FORMAT,
        "embedding_dim": str(embed_dim),
        **run.config.preprocessing().to_metadata(),
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


def test_metrics_of(run: RunDir, selection: dict) -> dict:
    """Test-split metrics of the exported checkpoint's epoch, where the run measured them ({} otherwise)."""
    if "test_metrics" in selection:  # a validation run's shipped checkpoint, evaluated once on test
        return selection["test_metrics"]
    if run.finished and run.summary().get("evaluated_on") == "validation":
        return {}
    row = next((r for r in run.metrics() if r["epoch"] == selection.get("epoch") and "recall@1" in r), {})
    return {k: v for k, v in row.items() if k.startswith(("recall@", "nmi", "map@"))}


# --- the command --------------------------------------------------------------------------------
def export_run(cfg: ExportConfig) -> dict:
    """``s2sd export``: write ``model.onnx`` (+ engine, Triton repository) and ``export_report.json``.

    Raises S2SDError when a parity bound breaks, and MissingDependencyError (exit 3) after writing
    the verified ONNX when a TensorRT engine was asked for on a machine that cannot build one.
    """
    cfg.validate()
    run = RunDir.open(cfg.run)
    model, selection = run.load_model(cfg.checkpoint)
    deployed = model.deployed(cfg.with_teacher)
    out = Path(cfg.out) if cfg.out else run.path / "export"
    out.mkdir(parents=True, exist_ok=True)
    teacher_dim = deployed.teacher[-1].out_features if deployed.teacher is not None else None
    log.info("exporting %s (epoch %s): %s", selection["checkpoint"], selection.get("epoch"), selection["rule"])
    metadata = onnx_metadata(run, model.embed_dim, teacher_dim, selection)
    onnx_path = export_onnx(deployed, out / "model.onnx", run.config.image_size, cfg.opset, metadata)
    parity = verify_onnx(deployed, onnx_path, run.config, cfg.verify_limit)
    report = {
        "config": asdict(cfg),
        "run_id": run.run_id,
        "onnx": str(onnx_path),
        "package_version": __version__,
        "checkpoint": selection,
        "onnx_bytes": onnx_path.stat().st_size,
        "metadata": metadata,
        "parity": parity,
    }
    failure = parity_failure(parity)
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
    from .tensorrt import TensorRTUnavailable, build_engine, check_engine

    try:
        engine = build_engine(
            onnx_path,
            out / "model.engine",
            cfg.batch_min,
            cfg.batch_opt,
            cfg.batch_max,
            cfg.precision,
            cfg.workspace_mb,
            timing_cache=out / "timing.cache",
        )
    except TensorRTUnavailable as missing:
        write_json_atomic(out / "export_report.json", {**report, "status": "onnx-only", "tensorrt": str(missing)})
        raise MissingDependencyError(
            f"{onnx_path} is written and verified, but no TensorRT engine was built: {missing}"
        ) from None
    engine["check"] = check_engine(out / "model.engine", onnx_path)
    return engine
