"""k-NN search over unit-norm embeddings: exact kernels, approximate faiss indexes, cascades.

Exact search has several kernels because which one is fastest depends on the regime and the
machine. At low dimension the scan is cheap and selecting the top k of N scores dominates, so the
``*-grouped`` kernels select in two stages: split the N scores into groups, take each group's
maximum, keep the k groups with the largest maxima, then the top k among those groups' members.
It is exact: an item among the top k lies in a group whose maximum is at least the k-th best
score, and at most k groups have such a maximum. Group j holds the strided columns j, j + G,
j + 2G, ... (G groups), so the maxima are an elementwise maximum over contiguous rows, which
numpy and torch vectorise; a max over short contiguous runs was 3-4x slower here.
``numpy-grouped`` does the same in numpy, whose BLAS (OpenBLAS) computed a batch-1 product 3x
faster than torch's (MKL) on the AMD CPUs here.

A cascade re-ranks a student shortlist with the teacher's inner products through faiss, which reads
each query's K teacher rows in place (a numpy gather copies them first and was 1.5-3x slower), in
one thread: see :func:`one_openmp_thread`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from .metrics import drop_self

EXACT_KERNELS = ("faiss-flat", "matmul-topk", "matmul-grouped", "numpy-grouped")
CPU_ONLY_KERNELS = ("numpy-grouped",)
APPROXIMATE = ("hnsw", "ivfpq")


def exact_kernels(device: str = "cpu") -> tuple[str, ...]:
    return tuple(k for k in EXACT_KERNELS if device == "cpu" or k not in CPU_ONLY_KERNELS)


def group_size(n: int, k: int) -> int:
    """Scores per group: the power of two nearest sqrt(n / k) / 3, between 8 and 512. sqrt(n / k) balances
    the two stages (n / group maxima to rank against k * group candidates); the maxima pass is the
    cheaper one per score, and a third of it measured best or near it for k 10..100, n 1e4..1e5."""
    return int(2 ** np.clip(np.round(np.log2(np.sqrt(n / k) / 3)), 3, 9))


def grouped_topk(scores: torch.Tensor, k: int, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``torch.topk(scores, k, dim=1)`` (values, indices) in two cheap stages; scores (Q, N)."""
    queries, n = scores.shape
    groups = n // (group or group_size(n, k))
    if groups < k:  # too few groups to gain anything
        return torch.topk(scores, min(k, n), dim=1)
    full = n // groups * groups
    maxima = scores[:, :full].reshape(queries, -1, groups).amax(dim=1)  # (Q, G): group j = columns j, j + G, ...
    best = torch.topk(maxima, k, dim=1).indices  # (Q, k)
    columns = (best[:, :, None] + groups * torch.arange(full // groups, device=scores.device)).reshape(queries, -1)
    candidates = torch.gather(scores, 1, columns)
    if full < n:  # the ragged tail is always a candidate
        columns = torch.cat([columns, torch.arange(full, n, device=scores.device).expand(queries, -1)], dim=1)
        candidates = torch.cat([candidates, scores[:, full:]], dim=1)
    values, order = torch.topk(candidates, k, dim=1)
    return values, torch.gather(columns, 1, order)


def grouped_topk_numpy(scores: np.ndarray, k: int, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`grouped_topk` in numpy, for scores numpy computed: mixing numpy's BLAS threads with torch's
    OpenMP threads made each call several times slower here (they spin-wait against each other)."""
    queries, n = scores.shape
    groups = n // (group or group_size(n, k))
    if groups < k:
        return _topk_numpy(scores, min(k, n))
    full = n // groups * groups
    maxima = scores[:, :full].reshape(queries, -1, groups).max(axis=1)  # (Q, G): group j = columns j, j + G, ...
    best = np.argpartition(maxima, -k, axis=1)[:, -k:]  # (Q, k), unordered
    columns = (best[:, :, None] + groups * np.arange(full // groups)).reshape(queries, -1)
    if full < n:  # the ragged tail is always a candidate
        columns = np.concatenate([columns, np.broadcast_to(np.arange(full, n), (queries, n - full))], axis=1)
    values, order = _topk_numpy(np.take_along_axis(scores, columns, axis=1), k)
    return values, np.take_along_axis(columns, order, axis=1)


def _topk_numpy(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the k largest per row, best first."""
    top = np.argpartition(scores, -k, axis=1)[:, -k:]
    values = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(top, order, axis=1)


class ExactSearch:
    """Inner-product k-NN over a gallery (N, d) with one of :data:`EXACT_KERNELS`.

    ``device="gpu"`` puts the faiss index on GPU 0 (faiss-gpu) and the matmul kernels on CUDA;
    that path follows the faiss and torch APIs but has not run here (no GPU on these machines).
    """

    def __init__(self, gallery: np.ndarray, kernel: str = "matmul-grouped", device: str = "cpu"):
        if kernel not in exact_kernels(device):
            raise ValueError(f"kernel must be one of {exact_kernels(device)} on {device}")
        self.kernel, self.device = kernel, device
        self.gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        if kernel == "faiss-flat":
            self.index = faiss.IndexFlatIP(gallery.shape[1])
            if device == "gpu":
                self.index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.index)
            self.index.add(self.gallery)
        else:
            self.tensor = torch.from_numpy(self.gallery).to("cuda" if device == "gpu" else "cpu")

    @property
    def nbytes(self) -> int:
        return self.gallery.nbytes

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, k), best first."""
        if self.kernel == "faiss-flat":
            return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        if self.kernel == "numpy-grouped":
            return grouped_topk_numpy(np.asarray(queries, dtype=np.float32) @ self.gallery.T, k)
        with torch.no_grad():
            queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.tensor.device)
            scores = queries @ self.tensor.T  # (Q, N)
            values, ids = grouped_topk(scores, k) if self.kernel == "matmul-grouped" else torch.topk(scores, k, dim=1)
        return values.cpu().numpy(), ids.cpu().numpy()


@dataclass
class ApproximateIndex:
    """A trained faiss index and what it costs to hold."""

    kind: str
    index: faiss.Index
    nbytes: int

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def build_approximate(kind: str, gallery: np.ndarray, seed: int = 0) -> ApproximateIndex:
    """HNSW (32 links, efSearch 64) or IVF-PQ (sqrt(N) lists, 16 probes, min(32, d/8) bytes per vector:
    more sub-quantizers at 2048-d made the build take 40 s here for little benefit in this benchmark)."""
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    n, d = gallery.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
    elif kind == "ivfpq":
        nlist = max(1, int(np.sqrt(n)))
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, _subquantizers(d), 8, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(16, nlist)
        index.cp.seed = seed
        sample = gallery[np.random.default_rng(seed).choice(n, min(n, max(256 * 39, 40 * nlist)), replace=False)]
        index.train(sample)
    else:
        raise ValueError(f"kind must be one of {APPROXIMATE}")
    index.add(gallery)
    return ApproximateIndex(kind, index, len(faiss.serialize_index(index)))


def _subquantizers(d: int) -> int:
    """The largest divisor of d that is at most min(32, d / 8) (faiss needs d % m == 0)."""
    limit = max(1, min(32, d // 8))
    return max(m for m in range(1, limit + 1) if d % m == 0)


def recall_against_exact(approximate_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Fraction of the exact top k that the approximate top k also returns (recall@k vs exact)."""
    hits = (approximate_ids[:, :k, None] == exact_ids[:, None, :k]).any(axis=2)
    return float(hits.sum() / exact_ids[:, :k].size)


class Cascade:
    """Student top-``shortlist`` from ``student``, re-ranked by inner products with the teacher gallery."""

    def __init__(self, student: ExactSearch, teacher_gallery: np.ndarray):
        self.student = student
        self.teacher_gallery = np.ascontiguousarray(teacher_gallery, dtype=np.float32)

    def search(self, student_queries: np.ndarray, teacher_queries: np.ndarray, shortlist: int, k: int,
               exclude_self: bool = False) -> np.ndarray:
        """Ids (Q, k), best first. ``exclude_self`` is for leave-one-out evaluation (query i is item i)."""
        _, candidates = self.student.search(student_queries, shortlist + int(exclude_self))  # (Q, K)
        if exclude_self:
            candidates = drop_self(candidates)
        scores = self.teacher_scores(candidates, np.asarray(teacher_queries, dtype=np.float32))
        _, order = _topk_numpy(scores, min(k, scores.shape[1]))
        return np.take_along_axis(candidates, order, axis=1)

    def teacher_scores(self, candidates: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """(Q, K) inner products of each query with its K candidates' teacher rows, read in place."""
        candidates = np.ascontiguousarray(candidates, dtype=np.int64)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.empty(candidates.shape, dtype=np.float32)
        with one_openmp_thread():
            faiss.fvec_inner_products_by_idx(faiss.swig_ptr(scores), faiss.swig_ptr(queries), faiss.swig_ptr(self.teacher_gallery),
                                             faiss.swig_ptr(candidates), queries.shape[1], *candidates.shape)
        return scores


@contextmanager
def one_openmp_thread():
    """Run faiss single-threaded in this thread: its OpenMP workers keep spinning after a parallel
    region and took a core from the next numpy BLAS call (2 cores here); a re-rank is too small to split."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)
