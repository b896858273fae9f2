"""Export the deployed model (student, optionally its largest teacher; never the rest) to a
self-describing ONNX file, and prove it (:mod:`.verify`). The file's interface and metadata keys are
described in :mod:`s2sd_deploy.serving.interface`.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .. import __version__
from ..atomic_files import atomic_path, check_free_space, interruption_point, write_json_atomic
from ..errors import MissingDependencyError, S2SDError
from ..output_folders import claim_output_folder, keep_failed, recover_folder, staging_folder, swap_in
from ..serving.interface import INPUT, ONNX_FORMAT, OUTPUT, REPORT, REPORT_FORMAT, TEACHER_OUTPUT, file_sha256
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

    Everything is written and verified in a staging folder beside the output folder, then swapped in whole: an
    interrupted export leaves the previous verified export (or none), never an unverified model beside a report.
    Raises S2SDError when a parity bound breaks (the attempt is kept as ``.OUT.failed``), and
    MissingDependencyError (exit 3) after writing the verified ONNX when a TensorRT engine was asked for on a
    machine that cannot build one.
    """
    cfg.validate()
    run = RunDir.open(cfg.run)
    out = Path(cfg.out) if cfg.out else run.path / "export"
    claim_export_folder(out, cfg, run)
    model, selection = run.load_model(cfg.checkpoint)
    deployed = model.deployed(cfg.with_teacher)
    check_free_space(out, 2 * model_bytes(deployed) * (2 if cfg.triton else 1), "--out", "the exported model")
    staging = staging_folder(out)
    try:
        report = _export_into(cfg, run, model, selection, deployed, staging, out)
    except ParityFailure as failure:
        kept = keep_failed(staging, out)
        raise S2SDError(f"{failure}; the unverified attempt is in {kept} ({out} is unchanged)") from None
    except TensorRTMissing as missing:
        swap_in(staging, out)
        raise MissingDependencyError(
            f"{out / 'model.onnx'} is written and verified, but no TensorRT engine was built: {missing}"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_in(staging, out)
    return report


def claim_export_folder(out: Path, cfg: ExportConfig, run: RunDir) -> None:
    """The output folder must be new, empty, or an earlier export (replaced with --force); never the run itself,
    a folder holding the run, or the checkpoint file exported."""
    inputs = [run.path] + ([Path(cfg.checkpoint)] if Path(cfg.checkpoint).suffix == ".safetensors" else [])
    for given in inputs:
        source, target = given.resolve(), out.resolve()
        if source == target or target in source.parents:
            raise S2SDError(f"--out {out} holds the input {given}: choose an output folder outside it")
    recover_folder(out)  # an earlier export that a killed swap left parked is the folder's content again
    claim_output_folder(out, "--out", what="an s2sd export", owner_files=[REPORT], force=cfg.force)


class ParityFailure(Exception):
    """ONNX Runtime and PyTorch disagree beyond the bounds; the message says by how much."""


class TensorRTMissing(Exception):
    """A TensorRT engine was asked for where none can be built; the verified ONNX is still exported."""


def _export_into(cfg, run, model, selection, deployed, staging: Path, out: Path) -> dict:
    """Write and verify the export in ``staging``; the report names the files where they will be (``out``)."""
    teacher_dim = deployed.teacher[-1].out_features if deployed.teacher is not None else None
    log.info("exporting %s (epoch %s): %s", selection["checkpoint"], selection.get("epoch"), selection["rule"])
    metadata = onnx_metadata(run, model.embed_dim, teacher_dim, selection)
    onnx_path = export_onnx(deployed, staging / "model.onnx", run.config.image_size, cfg.opset, metadata)
    interruption_point("export-verify")
    parity = verify_onnx(deployed, onnx_path, run.config, cfg.verify_limit)
    report = {
        "format": REPORT_FORMAT,
        "config": asdict(cfg),
        "run_id": run.run_id,
        "onnx": str(out / "model.onnx"),
        "package_version": __version__,
        "checkpoint": selection,
        "onnx_bytes": onnx_path.stat().st_size,
        "onnx_sha256": file_sha256(onnx_path),
        "metadata": metadata,
        "parity": parity,
    }
    failure = parity_failure(parity)
    if failure:
        write_json_atomic(staging / REPORT, {**report, "status": "failed"})
        raise ParityFailure(failure)
    if cfg.triton:
        from .triton import write_triton_repository

        write_triton_repository(onnx_path, staging / "triton", cfg.batch_max)
        report["triton"] = str(out / "triton" / "s2sd_embedder")
    if cfg.engine == "trt":
        try:
            report["tensorrt"] = _build_tensorrt(cfg, onnx_path, staging, out)
        except TensorRTMissing as missing:
            write_json_atomic(staging / REPORT, {**report, "status": "onnx-only", "tensorrt": str(missing)})
            raise
    write_json_atomic(staging / REPORT, {**report, "status": "ok"})
    return report


def model_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers: about the size of its ONNX file."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _build_tensorrt(cfg: ExportConfig, onnx_path: Path, staging: Path, out: Path) -> dict:
    from .tensorrt import TensorRTUnavailable, build_engine, check_engine

    previous_cache = out / "timing.cache"
    if previous_cache.is_file():  # kernel timings of the previous build make this one faster
        shutil.copyfile(previous_cache, staging / "timing.cache")
    try:
        engine = build_engine(
            onnx_path,
            staging / "model.engine",
            cfg.batch_min,
            cfg.batch_opt,
            cfg.batch_max,
            cfg.precision,
            cfg.workspace_mb,
            timing_cache=staging / "timing.cache",
        )
    except TensorRTUnavailable as missing:
        raise TensorRTMissing(str(missing)) from None
    engine["check"] = check_engine(staging / "model.engine", onnx_path)
    engine = relocated(engine, staging, out)
    write_json_atomic(staging / "model.json", engine)  # the sidecar, naming the files where they will be
    return engine


def relocated(value, staging: Path, out: Path):
    """``value`` with every path under ``staging`` renamed to the same path under ``out``."""
    if isinstance(value, dict):
        return {k: relocated(v, staging, out) for k, v in value.items()}
    if isinstance(value, list):
        return [relocated(v, staging, out) for v in value]
    if isinstance(value, str) and value.startswith(str(staging)):
        return str(out) + value[len(str(staging)) :]
    return value
