"""``s2sd bench-latency``: what retrieval with low- vs high-dimensional embeddings costs, and buys.

Three parts, each reusable on its own:
- :func:`retrieval_cost`: exact (fastest verified kernel per regime) and approximate search on
  synthetic unit-norm vectors, per dimension, gallery size and query batch, next to the machine's
  own measured memory bandwidth and matrix-multiply throughput.
- :func:`accuracy_part`: what each head of a trained run buys (Recall@k, mAP@R) and the cascade
  (student shortlist re-ranked by the largest teacher).
- :func:`encoder_cost`: PyTorch eager vs ONNX Runtime per image, for the run's model and resnet50.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import MissingDependencyError, S2SDError
from .retrieval import APPROXIMATE, Cascade, ExactSearch, build_approximate, exact_kernels, recall_against_exact

SYNTHETIC = "synthetic unit-norm vectors"


@dataclass
class BenchConfig:
    """Options of ``s2sd bench-latency``; saved in results.json."""

    run: str | None = None  # run directory for the accuracy and encoder parts (None: latest in runs/)
    model: str | None = None  # an exported model.onnx for the encoder part
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


def measure(function, warmup: int = 1, min_repeats: int = 5, max_repeats: int = 200, budget_s: float = 0.4,
            synchronize=None) -> np.ndarray:
    """Seconds per call: warm-up calls, then repeats until ``budget_s`` (at least ``min_repeats``)."""
    for _ in range(warmup):
        function()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        function()
        if synchronize:
            synchronize()
        times.append(time.perf_counter() - begin)
    return np.array(times)


def measure_interleaved(functions: dict, min_rounds: int = 5, budget_s: float = 1.0) -> dict[str, np.ndarray]:
    """Seconds per call of each function, calling them in turn round after round: their ratios then
    share the machine's state (caches, other threads, clock) instead of each getting its own moment."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    started = time.perf_counter()
    while len(times[next(iter(times))]) < min_rounds or time.perf_counter() - started < budget_s:
        for name, function in functions.items():
            begin = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - begin)
    return {name: np.array(values) for name, values in times.items()}


def latency_stats(seconds: np.ndarray, batch: int) -> dict:
    """p50/p95/p99 of what one query waits (its batch's call) in ms, and queries per second."""
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99]) * 1e3
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "qps": batch / seconds.mean(), "repeats": len(seconds)}


# --- the machine ----------------------------------------------------------------------------
def machine_limits(budget_s: float = 0.5) -> dict:
    """Measured read bandwidth (GB/s, summing a 512 MiB array) and fp32 GEMM throughput (GFLOP/s)."""
    big = torch.ones(128 * 2**20)  # 512 MiB, far beyond any cache
    read = measure(lambda: big.sum(), budget_s=budget_s).min()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = measure(lambda: a @ b, budget_s=budget_s).min()
    return {"memory_bandwidth_gbs": big.numel() * 4 / read / 1e9, "gemm_gflops": 2 * 2048**3 / gemm / 1e9,
            "threads": torch.get_num_threads()}


def available_memory_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63


def estimate_memory_bytes(cfg: BenchConfig, dims: list[int]) -> int:
    """Peak bytes of the largest regime: the widest gallery, a copy per index, one score matrix."""
    largest = max(cfg.gallery_sizes) * (10 if cfg.large else 1)
    gallery = largest * max(dims) * 4
    copies = 1 + len(cfg.indexes)  # exact kernels share one copy; each index holds another at most
    scores = max(cfg.query_batches) * largest * 4 * 2
    return gallery * (copies + 1) + scores  # +1: the un-normalised source the dims are cut from


def check_memory(cfg: BenchConfig, dims: list[int]) -> int:
    """Refuse before allocating anything when the estimate exceeds available memory."""
    needed, available = estimate_memory_bytes(cfg, dims), available_memory_bytes()
    if needed > available:
        raise S2SDError(
            f"this configuration needs about {needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is available; "
            f"drop --large, or lower --gallery-sizes / --dims"
        )
    return needed


# --- retrieval cost --------------------------------------------------------------------------
def unit_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, d), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fastest_exact(gallery: np.ndarray, queries: np.ndarray, k: int, budget_s: float, device: str = "cpu") -> tuple[dict, dict]:
    """Time every exact kernel on one regime; keep those returning IndexFlatIP's neighbours."""
    expected_scores, expected_ids = ExactSearch(gallery, "faiss-flat").search(queries, k)
    synchronize = torch.cuda.synchronize if device == "gpu" else None
    kernels = {}
    for kernel in exact_kernels(device):
        search = ExactSearch(gallery, kernel, device)
        scores, ids = search.search(queries, k)
        # Equal ids, or equal scores where near-ties order differently: the same neighbours.
        correct = bool((ids == expected_ids).all() or np.allclose(scores, expected_scores, atol=1e-5))
        seconds = measure(lambda: search.search(queries, k), budget_s=budget_s, synchronize=synchronize)
        stats = latency_stats(seconds, len(queries))
        kernels[kernel] = {**stats, "verified_same_neighbours": correct}
    best = min((name for name, v in kernels.items() if v["verified_same_neighbours"]), key=lambda n: kernels[n]["p50_ms"])
    return {"kernel": best, **kernels[best]}, kernels


def retrieval_cost(cfg: BenchConfig, dims: list[int], deadline: Deadline, progress=print) -> list[dict]:
    """One row per (gallery size, dimension, query batch, index): latency, QPS, build time, memory."""
    rng = np.random.default_rng(cfg.seed)
    sizes = sorted(set(cfg.gallery_sizes + ([1_000_000] if cfg.large else [])))
    rows = []
    for n in sizes:
        source = rng.standard_normal((n, max(dims)), dtype=np.float32)
        for d in dims:
            if deadline.passed:
                deadline.skip(f"retrieval cost from N={n:,} d={d} on")
                return rows
            gallery = source[:, :d] / np.linalg.norm(source[:, :d], axis=1, keepdims=True)
            rows += _regime_rows(cfg, gallery, rng, deadline)
            progress(f"retrieval cost: N={n:,} d={d} done")
    return rows


def _regime_rows(cfg: BenchConfig, gallery: np.ndarray, rng, deadline: Deadline) -> list[dict]:
    n, d = gallery.shape
    rows, exact_ids = [], {}
    for batch in cfg.query_batches:
        queries = unit_vectors(batch, d, rng)
        best, kernels = fastest_exact(gallery, queries, cfg.k, budget_s=0.3, device=cfg.device)
        exact_ids[batch] = (queries, ExactSearch(gallery, "faiss-flat").search(queries, cfg.k)[1])
        rows.append({"data": SYNTHETIC, "gallery": n, "dim": d, "batch": batch, "index": "flat", **best,
                     "kernels": kernels, "build_s": 0.0, "index_bytes": gallery.nbytes, "recall@10_vs_exact": 1.0})
    for kind in [i for i in cfg.indexes if i != "flat"]:
        if deadline.passed:
            deadline.skip(f"{kind} at N={n:,} d={d}")
            continue
        started = time.perf_counter()
        index = build_approximate(kind, gallery, cfg.seed)
        build_s = time.perf_counter() - started
        for batch, (queries, truth) in exact_ids.items():
            _, ids = index.search(queries, cfg.k)
            stats = latency_stats(measure(lambda: index.search(queries, cfg.k), budget_s=0.3), batch)
            rows.append({"data": SYNTHETIC, "gallery": n, "dim": d, "batch": batch, "index": kind, "kernel": kind,
                         **stats, "build_s": build_s, "index_bytes": index.nbytes,
                         "recall@10_vs_exact": recall_against_exact(ids, truth, cfg.k)})
    return rows


def contrast(rows: list[dict], student_dim: int, limits: dict) -> list[dict]:
    """Per exact regime: measured cost ratio against the student's d, the theoretical d/d_student,
    and the share of the machine's bandwidth (batch 1) or GEMM throughput (batches) it reaches."""
    exact = {(r["gallery"], r["batch"], r["dim"]): r for r in rows if r["index"] == "flat"}
    out = []
    for (n, batch, d), row in sorted(exact.items()):
        base = exact.get((n, batch, student_dim))
        seconds = row["p50_ms"] / 1e3
        out.append({
            "gallery": n, "batch": batch, "dim": d, "kernel": row["kernel"], "p50_ms": row["p50_ms"],
            "measured_ratio": row["p50_ms"] / base["p50_ms"] if base else None,
            "theoretical_ratio": d / student_dim,
            "bandwidth_share": n * d * 4 / seconds / 1e9 / limits["memory_bandwidth_gbs"],
            "gemm_share": 2 * n * d * batch / seconds / 1e9 / limits["gemm_gflops"],
        })
    return out


# --- what the dimensions buy -------------------------------------------------------------------
def accuracy_part(run_dir: Path, cfg: BenchConfig) -> dict:
    """Recall@k / mAP@R of the student and every teacher on the run's test split, and the cascade."""
    from .data import splits_for
    from .evaluation import embed_heads
    from .metrics import evaluate_embeddings, recall_at_k
    from .rundir import load_trained_model

    model, run, _ = load_trained_model(run_dir)
    _, test = splits_for(run.config)
    heads = embed_heads(model, test, run.config)
    student = next(e for name, e in heads.items() if name.startswith("student-"))
    teachers = [e for name, e in heads.items() if name.startswith("teacher-")]
    ks = run.config.recall_ks
    result = {"run": str(run.path), "dataset": run.config.dataset, "test_images": len(test),
              "heads": {name: evaluate_embeddings(e, test.labels, ks) for name, e in heads.items()}}
    if teachers:
        largest = max(teachers, key=lambda t: t.shape[1])
        cascade = Cascade(ExactSearch(student), largest)
        for shortlist in cfg.shortlists:
            ids = cascade.search(student, largest, min(shortlist, len(student) - 2), max(ks), exclude_self=True)
            recalls = recall_at_k(test.labels[ids], test.labels, ks)
            result["heads"][f"cascade-{student.shape[1]}>{largest.shape[1]}@{shortlist}"] = {f"recall@{k}": v for k, v in recalls.items()}
    return result


def cascade_latency(cfg: BenchConfig, student_dim: int, teacher_dim: int, gallery_size: int, deadline: Deadline,
                    kernels: dict | None = None) -> list[dict]:
    """Latency of student search, teacher search and the cascade on a synthetic gallery.

    ``kernels`` maps (gallery, dim, batch) to the fastest exact kernel :func:`retrieval_cost` found;
    the cascade's shortlist uses the student's, so both sides get the same kernel."""
    kernels = kernels or {}
    rng = np.random.default_rng(cfg.seed + 1)
    student_gallery, teacher_gallery = unit_vectors(gallery_size, student_dim, rng), unit_vectors(gallery_size, teacher_dim, rng)
    rows = []
    for batch in cfg.query_batches:
        if deadline.passed:
            deadline.skip(f"cascade latency at batch {batch}")
            continue
        student = ExactSearch(student_gallery, kernels.get((gallery_size, student_dim, batch), "matmul-grouped"), cfg.device)
        teacher = ExactSearch(teacher_gallery, kernels.get((gallery_size, teacher_dim, batch), "matmul-grouped"), cfg.device)
        cascade = Cascade(student, teacher_gallery)
        sq, tq = unit_vectors(batch, student_dim, rng), unit_vectors(batch, teacher_dim, rng)
        compared = {"student": lambda: student.search(sq, cfg.k)}
        for shortlist in cfg.shortlists:
            compared[f"cascade@{shortlist}"] = lambda s=shortlist: cascade.search(sq, tq, s, cfg.k)
        seconds = {"teacher": measure(lambda: teacher.search(tq, cfg.k), budget_s=0.3), **measure_interleaved(compared)}
        stats = {name: latency_stats(values, batch) for name, values in seconds.items()}
        for name, values in stats.items():
            rows.append({"data": SYNTHETIC, "gallery": gallery_size, "batch": batch, "method": name,
                         "kernel": teacher.kernel if name == "teacher" else student.kernel, **values,
                         "vs_student": values["p50_ms"] / stats["student"]["p50_ms"]})
    return rows


def fastest_kernels(rows: list[dict]) -> dict:
    """(gallery, dim, batch) -> the exact kernel :func:`retrieval_cost` chose."""
    return {(r["gallery"], r["dim"], r["batch"]): r["kernel"] for r in rows if r["index"] == "flat"}


# --- encoder cost ----------------------------------------------------------------------------
def encoder_cost(model, image_size: int, name: str, workdir: Path, budget_s: float = 1.0) -> list[dict]:
    """PyTorch eager vs ONNX Runtime (CPU; CUDA/TensorRT when present): batch 1 latency, batch 32 throughput."""
    import onnxruntime as ort

    from .export import export_onnx
    from .runtime import choose_providers

    model = model.eval()
    onnx_path = export_onnx(model, workdir / f"{name}.onnx", image_size)
    rows = []
    for provider in choose_providers():
        session = ort.InferenceSession(str(onnx_path), providers=[provider])
        if session.get_providers()[0] != provider:
            continue  # onnxruntime-gpu lists GPU providers it then cannot use
        for batch in (1, 32):
            images = torch.randn(batch, 3, image_size, image_size)
            with torch.no_grad():
                reference = model.embed(images).numpy()
            got = session.run(None, {"images": images.numpy()})[0]
            with torch.no_grad():
                eager = measure(lambda: model.embed(images), budget_s=budget_s, min_repeats=3)
            runtime = measure(lambda: session.run(None, {"images": images.numpy()}), budget_s=budget_s, min_repeats=3)
            rows.append({"model": name, "image_size": image_size, "batch": batch, "backend": provider,
                         "torch_ms_per_batch": float(np.median(eager) * 1e3), "onnx_ms_per_batch": float(np.median(runtime) * 1e3),
                         "torch_images_per_s": batch / float(np.median(eager)), "onnx_images_per_s": batch / float(np.median(runtime)),
                         "speedup": float(np.median(eager) / np.median(runtime)),
                         "max_abs_diff": float(np.abs(got - reference).max()),
                         "min_cosine": float((got * reference).sum(1).min())})
    return rows


# --- the whole command -------------------------------------------------------------------------
def latest_run(runs_dir: Path = Path("runs")) -> Path | None:
    """The most recently finished run under ``runs_dir`` (has a summary.json), if any."""
    finished = [p.parent for p in runs_dir.glob("*/summary.json")] if runs_dir.is_dir() else []
    return max(finished, key=lambda p: (p / "summary.json").stat().st_mtime) if finished else None


def require_gpu() -> None:
    import faiss

    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        raise MissingDependencyError(
            "--device gpu: faiss sees no GPU (faiss.get_num_gpus() is 0); on an NVIDIA machine install "
            "pip install 's2sd-deploy[gpu]' (faiss-gpu)"
        )


def run_benchmark(cfg: BenchConfig, progress=print) -> dict:
    """All parts within ``cfg.max_seconds``; Ctrl-C returns what was measured so far."""
    from .env import machine_info

    cfg.validate()
    if cfg.device == "gpu":
        require_gpu()
    run_dir = Path(cfg.run) if cfg.run else latest_run()
    student_dim = _student_dim(run_dir)
    dims = cfg.dims or sorted({student_dim, 512, 1024, 2048})
    estimate = check_memory(cfg, dims)
    deadline = Deadline(cfg.max_seconds)
    results = {"config": asdict(cfg), "machine": machine_info(), "memory_estimate_bytes": estimate,
               "student_dim": student_dim, "dims": dims, "notes": [], "interrupted": False}
    retrieval_deadline = Deadline(0.5 * cfg.max_seconds)  # half the budget for the cost grid, so the
    try:  # accuracy and encoder parts always get their turn
        results["machine_limits"] = machine_limits()
        results["retrieval"] = retrieval_cost(cfg, dims, retrieval_deadline, progress)
        results["contrast"] = contrast(results["retrieval"], student_dim, results["machine_limits"])
        results["cascade_latency"] = cascade_latency(cfg, student_dim, max(dims), max(cfg.gallery_sizes), deadline,
                                                     fastest_kernels(results["retrieval"]))
        if run_dir:
            progress(f"accuracy: embedding the test split of {run_dir}")
            results["accuracy"] = accuracy_part(run_dir, cfg)
        else:
            results["notes"].append("no trained run found under runs/: train one with `s2sd train`, then "
                                    "`s2sd bench-latency --run runs/<run>` adds what each dimension buys")
        if cfg.encoder:
            results["encoder"] = _encoder_part(run_dir, deadline, progress)
    except KeyboardInterrupt:
        results["interrupted"] = True
        results["notes"].append("interrupted with Ctrl-C: the results are those measured before")
    results["notes"] += retrieval_deadline.skipped + deadline.skipped
    return results


def _student_dim(run_dir: Path | None) -> int:
    if not run_dir:
        return 128
    from .rundir import read_run

    return read_run(run_dir).config.embed_dim


def _encoder_part(run_dir, deadline: Deadline, progress) -> list[dict]:
    import tempfile

    from .config import build_train_config
    from .model import build_model
    from .rundir import load_trained_model

    jobs = []
    if run_dir:
        model, run, _ = load_trained_model(run_dir)
        jobs.append((model, run.config.image_size, "run"))
    paper = build_train_config({"dataset": "cub200", "data_root": ".", "s2sd": False})  # resnet50, 224 px
    jobs.append((build_model(paper), paper.image_size, "resnet50"))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for model, size, name in jobs:
            if deadline.passed:
                deadline.skip(f"encoder cost of {name}")
                continue
            progress(f"encoder cost: {name} at {size} px")
            rows += encoder_cost(model, size, name, Path(workdir))
    return rows
