"""Exact and approximate k-NN kernels that bench-latency times against each other.

Which exact kernel is fastest depends on the regime and the machine, so there are several: faiss
``IndexFlatIP``, a torch matrix product with ``torch.topk``, and a product (torch or numpy) with the
two-stage exact top-k of :mod:`s2sd_deploy.serving.knn`. ``numpy-grouped`` stays in numpy, because
handing numpy's scores to torch made the two libraries' thread pools spin against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from ..gpu import faiss_gpu_count
from ..metrics import drop_self
from ..serving.knn import group_size, grouped_topk, inner_products_by_id, rerank
from .config import APPROXIMATE

EXACT_KERNELS = ("faiss-flat", "matmul-topk", "matmul-grouped", "numpy-grouped")
CPU_ONLY_KERNELS = ("numpy-grouped",)


def exact_kernels(device: str = "cpu") -> tuple[str, ...]:
    """The exact kernels that can run on ``device``: on a GPU the torch ones, and faiss's when faiss sees a GPU
    (faiss-cpu has no GPU index; the torch kernels still measure the GPU)."""
    if device == "cpu":
        return EXACT_KERNELS
    return tuple(k for k in EXACT_KERNELS if k not in CPU_ONLY_KERNELS and (k != "faiss-flat" or faiss_gpu_count() > 0))


def grouped_topk_torch(scores: torch.Tensor, k: int, group: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`s2sd_deploy.serving.knn.grouped_topk` in torch, for scores on a GPU; scores (Q, N)."""
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


class ExactSearch:
    """Inner-product k-NN over a gallery (N, d) with one of :data:`EXACT_KERNELS`.

    ``device="gpu"`` puts the matmul kernels on CUDA and, with faiss-gpu, the faiss index on GPU 0;
    that path follows the faiss and torch APIs and is proven only where bench/results/gpu/ holds a run.
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
            return grouped_topk(np.asarray(queries, dtype=np.float32) @ self.gallery.T, k)
        with torch.no_grad():
            queries = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.tensor.device)
            scores = queries @ self.tensor.T  # (Q, N)
            values, ids = (
                grouped_topk_torch(scores, k) if self.kernel == "matmul-grouped" else torch.topk(scores, k, dim=1)
            )
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


class Cascade:
    """Student top-``shortlist`` from ``student``, re-ranked by inner products with the teacher gallery."""

    def __init__(self, student: ExactSearch, teacher_gallery: np.ndarray):
        self.student = student
        self.teacher_gallery = np.ascontiguousarray(teacher_gallery, dtype=np.float32)

    def search(
        self,
        student_queries: np.ndarray,
        teacher_queries: np.ndarray,
        shortlist: int,
        k: int,
        exclude_self: bool = False,
    ) -> np.ndarray:
        """Ids (Q, k), best first. ``exclude_self`` is for leave-one-out evaluation (query i is item i)."""
        _, candidates = self.student.search(student_queries, shortlist + int(exclude_self))  # (Q, K)
        if exclude_self:
            candidates = drop_self(candidates)
        scores = inner_products_by_id(self.teacher_gallery, teacher_queries, candidates)
        return rerank(candidates, scores, k)[1]
