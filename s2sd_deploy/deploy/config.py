"""Options of ``s2sd export`` (no torch, so the command line can refuse bad ones at once)."""

from __future__ import annotations

from dataclasses import dataclass

from ..atomic_files import check_output_folder
from ..errors import S2SDError

ENGINES = ("onnx", "trt")
PRECISIONS = ("fp32", "fp16")


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
    force: bool = False  # replace an earlier export in --out

    def validate(self) -> None:
        """Checked before anything is loaded: a wrong option must not cost a model load and a verification."""
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
        if self.workspace_mb < 1:
            raise S2SDError(f"--workspace-mb must be at least 1, got {self.workspace_mb}")
        if self.verify_limit is not None and self.verify_limit < 2:
            raise S2SDError(f"--verify-limit must be at least 2 (Recall@1 needs a neighbour), got {self.verify_limit}")
        if self.out is not None:
            check_output_folder(self.out, "--out")
