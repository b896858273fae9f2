"""``s2sd bench-latency``: what retrieval with low- vs high-dimensional embeddings costs, and buys.

Its parts live in their own modules: :mod:`.retrieval_cost` (synthetic search cost and the cascade's),
:mod:`.accuracy` (what each head of a trained run buys), :mod:`.encoder_cost` (PyTorch vs ONNX Runtime),
:mod:`.machine` (the machine and its measured limits). This module holds the options and runs the parts
within the time budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..errors import MissingDependencyError, S2SDError
from ..gpu import GPU_EXTRA, faiss_gpu_count
from ..timing import LoadWatch
from ..training.run_dir import RunDir
from .config import BenchConfig

TEACHER_DIM = 2048  # the paper's largest teacher: what the student's cost is compared with


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


def check_gpu(device: str) -> list[str]:
    """``--device gpu`` needs torch's CUDA (exit 3 without it); faiss's GPU index is optional: without faiss-gpu
    the torch kernels measure the GPU, and the returned note says so."""
    if device != "gpu":
        return []
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(
            "--device gpu: torch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu"
        )
    if faiss_gpu_count() == 0:
        return [
            "faiss-gpu absent (faiss sees no GPU): exact search on the GPU was timed with the torch CUDA kernels "
            f"(matrix product + top-k) only, without faiss's GPU index ({GPU_EXTRA})"
        ]
    return []


# --- the whole command -------------------------------------------------------------------------
def run_benchmark(cfg: BenchConfig, progress=print) -> dict:
    """The headline first (always), then the optional parts while ``cfg.max_seconds`` lasts; Ctrl-C returns what
    was measured so far."""
    from .accuracy import accuracy_part
    from .encoder_cost import encoder_part
    from .machine import check_memory, machine_info, machine_limits
    from .retrieval_cost import cascade_latency, contrast, fastest_kernels, grid, headline

    cfg.validate()
    gpu_notes = check_gpu(cfg.device)
    watch = LoadWatch()
    run, choice = (RunDir.open(cfg.run), f"run {cfg.run} (--run)") if cfg.run else choose_run()
    progress(f"accuracy and encoder parts: {choice}")
    student_dim = run.config.embed_dim if run else 128
    dims = sorted(set(cfg.dims or [512, 1024, TEACHER_DIM]) | {student_dim})  # the student's row is always there
    teacher_dim = max(dims)
    estimate = check_memory(cfg, dims)
    deadline = Deadline(cfg.max_seconds)
    results = {
        "config": asdict(cfg),
        "machine": machine_info(),
        "memory_estimate_bytes": estimate,
        "student_dim": student_dim,
        "teacher_dim": teacher_dim,
        "dims": dims,
        "run_choice": choice,
        "notes": gpu_notes + ([] if cfg.run or run is None else [f"took {choice}"]),
        "interrupted": False,
    }
    for note in gpu_notes:
        progress(f"note: {note}")
    try:
        results["machine_limits"] = machine_limits(cfg.device)
        results["retrieval"] = headline(cfg, student_dim, teacher_dim, progress)
        done = {(r["gallery"], r["dim"]) for r in results["retrieval"]}
        if not deadline.passed:
            results["cascade_latency"] = cascade_latency(
                cfg, student_dim, teacher_dim, max(cfg.gallery_sizes), deadline, fastest_kernels(results["retrieval"])
            )
        else:
            deadline.skip("cascade latency")
        if run and not deadline.passed:
            progress(f"accuracy: embedding the test split of {run.path}")
            results["accuracy"] = accuracy_part(run, cfg)
        elif run:
            deadline.skip("accuracy of the run's heads")
        else:
            results["notes"].append(
                "no finished run found under runs/: train one with `s2sd train`, then "
                "`s2sd bench-latency --run runs/<run>` adds what each dimension buys"
            )
        if cfg.encoder:
            results["encoder"] = encoder_part(run, deadline, progress)
        results["retrieval"] += grid(cfg, dims, deadline, done, progress)
    except KeyboardInterrupt:
        results["interrupted"] = True
        results["notes"].append("interrupted with Ctrl-C: the results are those measured before")
    if "retrieval" in results:
        results["contrast"] = contrast(results["retrieval"], student_dim, results["machine_limits"])
    results["notes"] += deadline.skipped
    results["load_average"] = watch.stop()
    if watch.busy:  # every timing of a busy run is untrusted, however steady its repeats
        for row in (
            *results.get("retrieval", []),
            *results.get("contrast", []),
            *results.get("cascade_latency", []),
            *results.get("encoder", []),
        ):
            row["noisy"] = True
    results["notes"] += [note for note in (watch.note(),) if note]
    return results


def choose_run(runs_dir: str | Path = "runs") -> tuple[RunDir | None, str]:
    """The run whose heads the accuracy part measures, when no --run is given, and why it was taken: the newest
    finished run under ``runs_dir`` that has teacher heads (what the command compares the student with), else
    the newest finished run, saying that it has none."""
    finished = sorted(Path(runs_dir).glob(f"*/{RunDir.SUMMARY}"), key=lambda p: p.stat().st_mtime, reverse=True)
    runs = []
    for summary in finished:
        try:
            run = RunDir.open(summary.parent)
            runs.append((run, bool(run.config.s2sd and run.config.target_dims)))
        except S2SDError:  # a damaged or foreign folder is no candidate
            continue
    if not runs:
        return None, f"no finished run under {runs_dir}/, so only synthetic figures"
    with_teachers = [run for run, teachers in runs if teachers]
    if with_teachers:
        return with_teachers[
            0
        ], f"the newest finished run with teacher heads under {runs_dir}/, {with_teachers[0].path}"
    return runs[0][0], (
        f"the newest finished run under {runs_dir}/, {runs[0][0].path}, which has no teacher heads (none there has): "
        f"only the student's accuracy is measured; pass --run to choose one"
    )
