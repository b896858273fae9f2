"""``s2sd bench-latency``: what retrieval with low- vs high-dimensional embeddings costs, and buys.

Its parts live in their own modules: :mod:`.retrieval_cost` (synthetic search cost and the cascade's),
:mod:`.accuracy` (what each head of a trained run buys), :mod:`.encoder_cost` (PyTorch vs ONNX Runtime),
:mod:`.machine` (the machine and its measured limits). This module holds the options and runs the parts
within the time budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ..errors import S2SDError
from ..gpu import require_faiss_gpu
from ..training.run_dir import RunDir
from .kernels import APPROXIMATE


@dataclass
class BenchConfig:
    """Options of ``s2sd bench-latency``; saved in results.json."""

    run: str | None = None  # run directory for the accuracy and encoder parts (None: latest in runs/)
    dims: list[int] | None = None  # None: the student's d (128 without a run), 512, 1024, 2048
    gallery_sizes: list[int] = field(default_factory=lambda: [10_000, 100_000])
    large: bool = False  # add a 1e6 gallery
    query_batches: list[int] = field(default_factory=lambda: [1, 64])
    indexes: list[str] = field(default_factory=lambda: ["flat", "ivfpq"])  # hnsw builds slowly at 2048-d
    k: int = 10
    shortlists: list[int] = field(default_factory=lambda: [50, 100])
    device: str = "cpu"
    out: str = "bench-latency"
    max_seconds: float = 170.0  # the whole default run stays within 3 minutes
    encoder: bool = True
    seed: int = 0

    def validate(self) -> None:
        unknown = [i for i in self.indexes if i not in ("flat", *APPROXIMATE)]
        if unknown:
            raise S2SDError(f"invalid --index {','.join(unknown)}; choose from: flat, hnsw, ivfpq")
        if self.device not in ("cpu", "gpu"):
            raise S2SDError(f"invalid --device {self.device!r}; choose one of: cpu, gpu")
        if min(self.gallery_sizes + self.query_batches + (self.dims or [1])) < 1:
            raise S2SDError("--dims, --gallery-sizes and --query-batch take positive whole numbers")


class Deadline:
    """``--max-seconds``: parts check it and skip what no longer fits."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds
        self.skipped: list[str] = []  # what was left out because time ran out

    def skip(self, what: str) -> None:
        self.skipped.append(f"{what}: --max-seconds budget reached")

    @property
    def passed(self) -> bool:
        return time.perf_counter() > self.end


# --- the whole command -------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, progress=print) -> dict:
    """All parts within ``cfg.max_seconds``; Ctrl-C returns what was measured so far."""
    from .accuracy import accuracy_part
    from .encoder_cost import encoder_part
    from .machine import check_memory, machine_info, machine_limits
    from .retrieval_cost import cascade_latency, contrast, fastest_kernels, retrieval_cost

    cfg.validate()
    if cfg.device == "gpu":
        require_faiss_gpu("--device gpu")
    run = RunDir.open(cfg.run) if cfg.run else RunDir.latest()
    student_dim = run.config.embed_dim if run else 128
    dims = cfg.dims or sorted({student_dim, 512, 1024, 2048})
    estimate = check_memory(cfg, dims)
    deadline = Deadline(cfg.max_seconds)
    results = {
        "config": asdict(cfg),
        "machine": machine_info(),
        "memory_estimate_bytes": estimate,
        "student_dim": student_dim,
        "dims": dims,
        "notes": [],
        "interrupted": False,
    }
    retrieval_deadline = Deadline(0.5 * cfg.max_seconds)  # half the budget for the cost grid, so the
    try:  # accuracy and encoder parts always get their turn
        results["machine_limits"] = machine_limits()
        results["retrieval"] = retrieval_cost(cfg, dims, retrieval_deadline, progress)
        results["contrast"] = contrast(results["retrieval"], student_dim, results["machine_limits"])
        results["cascade_latency"] = cascade_latency(
            cfg, student_dim, max(dims), max(cfg.gallery_sizes), deadline, fastest_kernels(results["retrieval"])
        )
        if run:
            progress(f"accuracy: embedding the test split of {run.path}")
            results["accuracy"] = accuracy_part(run, cfg)
        else:
            results["notes"].append(
                "no trained run found under runs/: train one with `s2sd train`, then "
                "`s2sd bench-latency --run runs/<run>` adds what each dimension buys"
            )
        if cfg.encoder:
            results["encoder"] = encoder_part(run, deadline, progress)
    except KeyboardInterrupt:
        results["interrupted"] = True
        results["notes"].append("interrupted with Ctrl-C: the results are those measured before")
    results["notes"] += retrieval_deadline.skipped + deadline.skipped
    return results
