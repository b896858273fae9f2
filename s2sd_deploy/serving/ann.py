"""faiss indexes over unit-norm student vectors: which kind to build, building it, and tuning its search
parameter until a sample of the gallery's own vectors finds their exact neighbours.

Kinds (inner product, which is cosine on unit vectors):

- ``flat``: exact search, every vector compared; memory N * d * 4 bytes.
- ``ivf-pq``: an inverted file of ``nlist`` lists, vectors compressed to ``d / 4`` bytes (product quantisation);
  ``nprobe`` lists searched, and the top ``REFINE * k`` candidates re-scored exactly from the float32 vectors,
  which stay on disk (memory-mapped: only the candidates' rows are read). The smallest memory, approximate;
  without the re-scoring 4-dimension codes found only about half of the exact top 10 on clustered data.
- ``ivf-sq8``: the same lists, one byte per dimension; more memory than PQ, better recall.
- ``hnsw``: a graph over the full vectors (32 links a node); ``efSearch`` candidates explored. The fastest
  approximate search, the most memory.
- ``auto``: exact while a scan stays cheap and fits the memory budget, HNSW when it fits, IVF-PQ beyond.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from ..errors import S2SDError
from ..metrics import recall_against_exact
from .knn import inner_products_by_id, openmp_threads, rerank

EXACT_UP_TO = 200_000  # auto: a flat scan of 2e5 x 128-d vectors stays around 10 ms per query on 2 cores
HNSW_LINKS = 32
HNSW_BUILD_DEPTH = 128  # efConstruction: a better graph for a slower build
# Search parameters tried in order, the cheapest first; the first that reaches --min-recall is kept.
NPROBE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
EF_SEARCH_STEPS = (16, 32, 64, 128, 256, 512, 1024)
REFINE = 4  # ivf-pq: candidates re-scored exactly per result wanted
POINTS_PER_CENTROID = 39  # faiss's k-means warns with fewer training points per centroid


@dataclass
class TunedIndex:
    """A built faiss index, its factory string, its search parameter and the recall it measured."""

    index: faiss.Index
    kind: str
    factory: str
    parameter: str | None  # "nprobe=16" / "efSearch=64"; None for flat
    recall_at_10: float
    recall_queries: int
    refine: int = 0  # candidates re-scored exactly per result (ivf-pq)

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "search_parameter": self.parameter,
            "refine": self.refine,
            "recall@10_vs_exact": self.recall_at_10,
            "recall_queries": self.recall_queries,
        }


def search(index: faiss.Index, queries: np.ndarray, k: int, vectors: np.ndarray | None = None, refine: int = 0):
    """(scores, ids) (Q, k), best first; with ``refine``, the top ``refine * k`` of the index re-scored exactly
    against ``vectors`` (the gallery's float32 rows, possibly memory-mapped: only candidate rows are read)."""
    with openmp_threads(len(queries)):
        if not refine:
            return index.search(queries, k)
        _, candidates = index.search(queries, refine * k)
    # A view of the memory-mapped float32 .npy and of in-memory galleries; only another dtype or layout is copied.
    scores = inner_products_by_id(np.ascontiguousarray(vectors, dtype=np.float32), queries, candidates)
    scores[candidates < 0] = -np.inf  # fewer candidates than asked: last, whatever faiss wrote there
    return rerank(candidates, scores, k)


def choose_kind(n: int, d: int, memory_budget_bytes: int) -> str:
    """``auto``: flat up to :data:`EXACT_UP_TO` vectors when they fit; HNSW when vectors and graph fit; IVF-PQ."""
    flat_bytes = n * d * 4
    hnsw_bytes = flat_bytes + n * HNSW_LINKS * 2 * 4  # links of the base layer, 4-byte ids, both directions
    if n <= EXACT_UP_TO and flat_bytes <= memory_budget_bytes:
        return "flat"
    if hnsw_bytes <= memory_budget_bytes:
        return "hnsw"
    return "ivf-pq"


def factory_string(kind: str, n: int, d: int) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{HNSW_LINKS}"
    nlist = max(1, min(int(4 * np.sqrt(n)), n // POINTS_PER_CENTROID))
    if kind == "ivf-sq8":
        return f"IVF{nlist},SQ8"
    return f"IVF{nlist},PQ{pq_subvectors(d)}"


def pq_subvectors(d: int) -> int:
    """The largest divisor of d that is at most d / 4 (a byte per 4 dimensions; faiss needs d % m == 0)."""
    return max(m for m in range(1, max(1, d // 4) + 1) if d % m == 0)


def build(vectors: np.ndarray, kind: str, seed: int = 0) -> tuple[faiss.Index, str]:
    """A faiss index of ``kind`` over ``vectors`` (N, d) float32, trained on them when it needs training."""
    n, d = vectors.shape
    if kind in ("ivf-pq", "ivf-sq8") and n < 1000:
        raise S2SDError(
            f"{kind} needs at least 1000 vectors to train its quantisers, the gallery has {n}; "
            f"use --index flat (exact, and cheap at this size)"
        )
    factory = factory_string(kind, n, d)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index.hnsw.efConstruction = HNSW_BUILD_DEPTH
    if not index.is_trained:
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        centroids = max(256, ivf.nlist)  # the lists, and PQ's 256 codes per sub-vector, train on one sample
        size = min(n, POINTS_PER_CENTROID * centroids)
        sample = vectors[np.random.default_rng(seed).permutation(n)[:size]]
        index.train(np.ascontiguousarray(sample))
    index.add(vectors)
    return index, factory


def set_search_parameter(index: faiss.Index, parameter: str | None) -> None:
    if parameter:
        faiss.ParameterSpace().set_index_parameters(index, parameter)


def tune(
    index: faiss.Index,
    kind: str,
    factory: str,
    vectors: np.ndarray,
    min_recall: float,
    sample: int = 1000,
    seed: int = 0,
) -> TunedIndex:
    """Measure recall@10 against exact search, queries being a sample of the gallery's own vectors, for each
    search parameter from the cheapest up; keep the first that reaches ``min_recall``, or refuse with the numbers."""
    if kind == "flat":
        return TunedIndex(index, kind, factory, None, 1.0, 0)
    refine = REFINE if kind == "ivf-pq" else 0
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), min(sample, len(vectors)), replace=False)]
    truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    name, steps = ("efSearch", EF_SEARCH_STEPS) if kind == "hnsw" else ("nprobe", NPROBE_STEPS)
    if name == "nprobe":
        steps = [s for s in steps if s <= faiss.extract_index_ivf(index).nlist] or [1]
    measured = []
    for step in steps:
        parameter = f"{name}={step}"
        set_search_parameter(index, parameter)
        recall = recall_against_exact(search(index, queries, 10, vectors, refine)[1], truth, 10)
        measured.append((parameter, recall))
        if recall >= min_recall:
            return TunedIndex(index, kind, factory, parameter, recall, len(queries), refine)
    tried = ", ".join(f"{p}: {r:.3f}" for p, r in measured)
    raise S2SDError(
        f"{kind} ({factory}) reaches recall@10 {max(r for _, r in measured):.3f} at best against exact "
        f"search on {len(queries)} of the gallery's own vectors ({tried}), below --min-recall "
        f"{min_recall}; use --index hnsw or flat, or lower --min-recall"
    )
