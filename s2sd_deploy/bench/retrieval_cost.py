"""What exact and approximate search cost on synthetic unit-norm vectors, per dimension, gallery size and
query batch, next to the machine's own limits; and what the cascade (student shortlist re-ranked by the
teacher) costs against the student alone."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..metrics import recall_against_exact
from ..timing import latency_stats, measure, measure_interleaved, noisy
from .kernels import Cascade, ExactSearch, build_approximate, exact_kernels

if TYPE_CHECKING:
    from .latency import BenchConfig, Deadline

SYNTHETIC = "synthetic unit-norm vectors"


def unit_vectors(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((n, d), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fastest_exact(
    gallery: np.ndarray, queries: np.ndarray, k: int, budget_s: float, device: str = "cpu"
) -> tuple[dict, dict]:
    """Time every exact kernel on one regime; keep those returning IndexFlatIP's neighbours."""
    expected_scores, expected_ids = ExactSearch(gallery, "faiss-flat").search(queries, k)
    all_scores = queries @ gallery.T  # to check returned ids against, independently of any kernel

    synchronize = torch.cuda.synchronize if device == "gpu" else None
    kernels = {}
    for kernel in exact_kernels(device):
        search = ExactSearch(gallery, kernel, device)
        scores, ids = search.search(queries, k)
        # Equal ids, or ids whose true scores equal the expected ones where near-ties order differently.
        true_scores = np.take_along_axis(all_scores, ids, axis=1)
        correct = bool((ids == expected_ids).all() or np.allclose(true_scores, expected_scores, atol=1e-5))

        seconds = measure(lambda: search.search(queries, k), budget_s=budget_s, synchronize=synchronize)
        stats = latency_stats(seconds, len(queries))
        kernels[kernel] = {**stats, "verified_same_neighbours": correct}
    best = min(
        (name for name, v in kernels.items() if v["verified_same_neighbours"]), key=lambda n: kernels[n]["p50_ms"]
    )
    return {"kernel": best, **kernels[best]}, kernels


def headline(cfg: BenchConfig, student_dim: int, teacher_dim: int, progress=print) -> list[dict]:
    """The measurement the command exists for, always taken first: exact search over the largest gallery at the
    student's dimension and at the teacher's (2048), for every query batch. Not subject to the time budget."""
    n = max(cfg.gallery_sizes)
    rng = np.random.default_rng(cfg.seed)
    source = rng.standard_normal((n, max(student_dim, teacher_dim)), dtype=np.float32)
    rows = []
    for d in sorted({student_dim, teacher_dim}):
        gallery = normalised(source[:, :d])
        rows += exact_rows(cfg, gallery, rng, budget_s=0.3)
        progress(f"headline: exact search, N={n:,}, d={d} done")
    return rows


def grid(cfg: BenchConfig, dims: list[int], deadline: Deadline, done: set, progress=print) -> list[dict]:
    """Every other (gallery size, dimension) exact regime and every approximate index, while the budget lasts.
    ``done`` holds the (gallery, dim) regimes the headline measured already."""
    rng = np.random.default_rng(cfg.seed + 2)
    sizes = sorted(set(cfg.gallery_sizes + ([1_000_000] if cfg.large else [])))
    rows = []
    for n in sizes:
        if deadline.passed:
            deadline.skip(f"retrieval cost from N={n:,} on")
            break
        source = rng.standard_normal((n, max(dims)), dtype=np.float32)
        for d in dims:
            if deadline.passed:
                deadline.skip(f"retrieval cost from N={n:,} d={d} on")
                return rows
            gallery = normalised(source[:, :d])
            if (n, d) not in done:
                rows += exact_rows(cfg, gallery, rng, budget_s=0.3)
            rows += approximate_rows(cfg, gallery, rng, deadline)
            progress(f"retrieval cost: N={n:,} d={d} done")
    return rows


def normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def read_speed_gbs(gallery: np.ndarray, budget_s: float = 0.15, device: str = "cpu") -> float:
    """How fast this machine reads this gallery: the fastest plain matrix-vector product over it (numpy's BLAS and
    torch's, all threads; on ``device="gpu"`` torch's CUDA product, synchronised). No search can scan the gallery
    faster, in memory or in cache, so a search's share of it stays below 100% up to timing noise; a bandwidth
    measured on another size could not promise that (caches)."""
    if device == "gpu":
        tensor = torch.from_numpy(gallery).cuda()
        vector = tensor[0].clone()
        seconds = measure(lambda: tensor @ vector, budget_s=budget_s, synchronize=torch.cuda.synchronize).min()
        del tensor
        return gallery.nbytes / seconds / 1e9
    vector, tensor = gallery[0].copy(), torch.from_numpy(gallery)
    scans = (lambda: gallery @ vector, lambda: tensor @ torch.from_numpy(vector))
    return gallery.nbytes / min(measure(scan, budget_s=budget_s).min() for scan in scans) / 1e9


def exact_rows(cfg: BenchConfig, gallery: np.ndarray, rng, budget_s: float) -> list[dict]:
    """The fastest verified exact kernel per query batch on one gallery, and the gallery's read speed."""
    n, d = gallery.shape
    read_gbs = read_speed_gbs(gallery, device=cfg.device)
    rows = []
    for batch in cfg.query_batches:
        queries = unit_vectors(batch, d, rng)
        best, kernels = fastest_exact(gallery, queries, cfg.k, budget_s=budget_s, device=cfg.device)
        rows.append(
            {
                "data": SYNTHETIC,
                "gallery": n,
                "dim": d,
                "batch": batch,
                "index": "flat",
                **best,
                "kernels": kernels,
                "build_s": 0.0,
                "index_bytes": gallery.nbytes,
                "recall@10_vs_exact": 1.0,
                "gallery_read_gbs": read_gbs,
            }
        )
    return rows


def approximate_rows(cfg: BenchConfig, gallery: np.ndarray, rng, deadline: Deadline) -> list[dict]:
    n, d = gallery.shape
    queries = {batch: unit_vectors(batch, d, rng) for batch in cfg.query_batches}
    truth = {batch: ExactSearch(gallery, "faiss-flat").search(q, cfg.k)[1] for batch, q in queries.items()}
    rows = []
    for kind in [i for i in cfg.indexes if i != "flat"]:
        if deadline.passed:
            deadline.skip(f"{kind} at N={n:,} d={d}")
            continue
        started = time.perf_counter()
        index = build_approximate(kind, gallery, cfg.seed)
        build_s = time.perf_counter() - started
        for batch, batch_queries in queries.items():
            _, ids = index.search(batch_queries, cfg.k)
            stats = latency_stats(measure(lambda: index.search(batch_queries, cfg.k), budget_s=0.3), batch)
            rows.append(
                {
                    "data": SYNTHETIC,
                    "gallery": n,
                    "dim": d,
                    "batch": batch,
                    "index": kind,
                    "kernel": kind,
                    **stats,
                    "build_s": build_s,
                    "index_bytes": index.nbytes,
                    "recall@10_vs_exact": recall_against_exact(ids, truth[batch], cfg.k),
                }
            )
    return rows


def contrast(rows: list[dict], student_dim: int, limits: dict) -> list[dict]:
    """Per exact regime: measured cost ratio against the student's d, the theoretical d/d_student, the share of
    the gallery's read speed (its plain scan, measured in the same run) and of the machine's GEMM throughput."""
    exact = {(r["gallery"], r["batch"], r["dim"]): r for r in rows if r["index"] == "flat"}
    out = []
    for (n, batch, d), row in sorted(exact.items()):
        base = exact.get((n, batch, student_dim))
        seconds = row["p50_ms"] / 1e3
        out.append(
            {
                "gallery": n,
                "batch": batch,
                "dim": d,
                "kernel": row["kernel"],
                "p50_ms": row["p50_ms"],
                "measured_ratio": row["p50_ms"] / base["p50_ms"] if base else None,
                "noisy": noisy(row, base or {}),  # the figure or the student's it is compared with
                "theoretical_ratio": d / student_dim,
                "bandwidth_share": n * d * 4 / seconds / 1e9 / row["gallery_read_gbs"]
                if row.get("gallery_read_gbs")
                else None,
                "gemm_share": 2 * n * d * batch / seconds / 1e9 / limits["gemm_gflops"],
            }
        )
    return out


def cascade_latency(
    cfg: BenchConfig,
    student_dim: int,
    teacher_dim: int,
    gallery_size: int,
    deadline: Deadline,
    kernels: dict | None = None,
) -> list[dict]:
    """Latency of student search, teacher search and the cascade on a synthetic gallery.

    ``kernels`` maps (gallery, dim, batch) to the fastest exact kernel :func:`retrieval_cost` found;
    the cascade's shortlist uses the student's, so both sides get the same kernel."""
    kernels = kernels or {}
    rng = np.random.default_rng(cfg.seed + 1)
    student_gallery, teacher_gallery = (
        unit_vectors(gallery_size, student_dim, rng),
        unit_vectors(gallery_size, teacher_dim, rng),
    )
    rows = []
    for batch in cfg.query_batches:
        if deadline.passed:
            deadline.skip(f"cascade latency at batch {batch}")
            continue
        student = ExactSearch(
            student_gallery, kernels.get((gallery_size, student_dim, batch), "matmul-grouped"), cfg.device
        )
        teacher = ExactSearch(
            teacher_gallery, kernels.get((gallery_size, teacher_dim, batch), "matmul-grouped"), cfg.device
        )
        cascade = Cascade(student, teacher_gallery)
        sq, tq = unit_vectors(batch, student_dim, rng), unit_vectors(batch, teacher_dim, rng)
        compared = {"student": lambda: student.search(sq, cfg.k)}
        for shortlist in cfg.shortlists:
            compared[f"cascade@{shortlist}"] = lambda s=shortlist: cascade.search(sq, tq, s, cfg.k)
        seconds = {"teacher": measure(lambda: teacher.search(tq, cfg.k), budget_s=0.3), **measure_interleaved(compared)}
        stats = {name: latency_stats(values, batch) for name, values in seconds.items()}
        for name, values in stats.items():
            rows.append(
                {
                    "data": SYNTHETIC,
                    "gallery": gallery_size,
                    "batch": batch,
                    "method": name,
                    "kernel": teacher.kernel if name == "teacher" else student.kernel,
                    **values,
                    "vs_student": values["p50_ms"] / stats["student"]["p50_ms"],
                    "noisy": noisy(values, stats["student"]),
                }
            )
    return rows


def fastest_kernels(rows: list[dict]) -> dict:
    """(gallery, dim, batch) -> the exact kernel :func:`retrieval_cost` chose."""
    return {(r["gallery"], r["dim"], r["batch"]): r["kernel"] for r in rows if r["index"] == "flat"}
