"""The contract between an exported model and its clients: tensor names and metadata keys.

The ONNX model has one input ``images`` (float32 [batch, 3, H, W], dynamic batch) and one output
``embeddings`` (float32 [batch, d], L2-normalised inside the graph); with the largest teacher exported
a second output ``teacher_embeddings``. Its ``metadata_props`` (all strings; lists and dicts as JSON)
tell a client how to preprocess and whether to trust the file:

==================== ===========================================================
``s2sd_format``      ``s2sd-onnx/1``
``embedding_dim``    d of ``embeddings`` (``teacher_dim`` for the teacher output)
``image_size``       side of the square crop fed to the network
``resize_size``      shorter side after resizing, before the centre crop
``interpolation``    PIL resampling filter of the resize, e.g. ``bilinear``
``mean``, ``std``    per-channel normalisation of [0, 1] pixels, JSON lists
``channel_order``    ``RGB``; ``layout`` ``NCHW``; ``pixel_scale`` 255
``normalized``       ``true``: rows of the output have unit L2 norm
``input_name`` ...   ``images`` / ``embeddings`` / ``teacher_embeddings``
``run_id`` ...       source run, ``config_hash``, ``checkpoint``, ``checkpoint_epoch``,
                     ``selection_rule``, ``package_version``, ``dataset``, ``backbone``
                     and ``test_metrics`` (JSON)
==================== ===========================================================

``s2sd export`` writes the model with ``export_report.json`` (format ``s2sd-export-report/1``), which records the
model's SHA-256: :func:`check_export_report` refuses a model that the report beside it does not describe (it was
replaced by hand, or comes from another export), or whose verification failed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import S2SDError

ONNX_FORMAT = "s2sd-onnx/1"
INPUT, OUTPUT, TEACHER_OUTPUT = "images", "embeddings", "teacher_embeddings"
REPORT, REPORT_FORMAT = "export_report.json", "s2sd-export-report/1"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_export_report(model: Path) -> None:
    """Refuse a model beside an export report that describes another file, or says its verification failed.
    A model without a report, or beside a report that records no checksum (older exports), is not checked."""
    path = Path(model).parent / REPORT
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if not isinstance(report, dict) or Path(str(report.get("onnx", ""))).name != Path(model).name:
        return
    recorded = report.get("onnx_sha256")
    actual = file_sha256(model) if recorded else None
    if recorded and recorded != actual:
        raise S2SDError(
            f"{model} is not the model {path} describes (SHA-256 {actual[:12]}..., the report records "
            f"{recorded[:12]}...): it was replaced after the export; export the run again with `s2sd export RUN "
            f"--force`, or move the model out of that folder"
        )
    if report.get("status") == "failed":
        raise S2SDError(
            f"{path} says the verification of {model} failed (ONNX Runtime and PyTorch disagree); do not use it"
        )
