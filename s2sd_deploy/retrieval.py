"""k-NN search over unit-norm embeddings: exact kernels, approximate faiss indexes, cascades.

Exact search has several kernels because which one is fastest depends on the regime. At low
dimension the scan is cheap and selecting the top k of N scores dominates, so
``matmul-grouped`` selects in two stages: the maximum of each group of 128 scores, the top-k
groups by maximum, then the top k among those groups' members. It is exact: an item among the
top k lies in a group whose maximum is at least the k-th best score, and at most k groups have
such a maximum.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

from .metrics import drop_self

EXACT_KERNELS = ("faiss-flat", "matmul-topk", "matmul-grouped")
APPROXIMATE = ("hnsw", "ivfpq")
GROUP = 128  # scores per group in the two-stage selection; measured best of 64..512 here


def grouped_topk(scores: torch.Tensor, k: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``torch.topk(scores, k, dim=1)`` (values, indices) in two cheap stages; scores (Q, N)."""
    queries, n = scores.shape
    full = n // group * group
    if full // group < k:  # too few groups to gain anything
        return torch.topk(scores, min(k, n), dim=1)
    maxima = scores[:, :full].reshape(queries, -1, group).amax(dim=2)  # (Q, N / group)
    groups = torch.topk(maxima, k, dim=1).indices  # (Q, k)
    columns = (groups[:, :, None] * group + torch.arange(group, device=scores.device)).reshape(queries, -1)  # (Q, k * group)
    candidates = torch.gather(scores, 1, columns)
    if full < n:  # the ragged tail is always a candidate
        columns = torch.cat([columns, torch.arange(full, n, device=scores.device).expand(queries, -1)], dim=1)
        candidates = torch.cat([candidates, scores[:, full:]], dim=1)
    values, order = torch.topk(candidates, k, dim=1)
    return values, torch.gather(columns, 1, order)


class ExactSearch:
    """Inner-product k-NN over a gallery (N, d) with one of :data:`EXACT_KERNELS`.

    ``device="gpu"`` puts the faiss index on GPU 0 (faiss-gpu) and the matmul kernels on CUDA;
    that path follows the faiss and torch APIs but has not run here (no GPU on these machines).
    """

    def __init__(self, gallery: np.ndarray, kernel: str = "matmul-grouped", device: str = "cpu"):
        if kernel not in EXACT_KERNELS:
            raise ValueError(f"kernel must be one of {EXACT_KERNELS}")
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


def cascade_search(student: ExactSearch, teacher_gallery: np.ndarray, student_queries: np.ndarray,
                   teacher_queries: np.ndarray, shortlist: int, k: int, exclude_self: bool = False) -> np.ndarray:
    """Student top-``shortlist``, re-ranked by teacher inner products; returns ids (Q, k).

    ``exclude_self`` is for leave-one-out evaluation, where query i is gallery item i.
    """
    _, candidates = student.search(student_queries, shortlist + int(exclude_self))  # (Q, K)
    if exclude_self:
        candidates = drop_self(candidates)
    ids = torch.from_numpy(np.ascontiguousarray(candidates))
    gathered = torch.from_numpy(teacher_gallery).index_select(0, ids.reshape(-1)).view(*ids.shape, -1)  # (Q, K, D)
    queries = torch.from_numpy(np.ascontiguousarray(teacher_queries, dtype=np.float32))
    scores = torch.bmm(gathered, queries[:, :, None])[:, :, 0]  # (Q, K)
    order = torch.topk(scores, min(k, scores.shape[1]), dim=1).indices
    return torch.gather(ids, 1, order).numpy()
