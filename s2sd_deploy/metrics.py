"""Retrieval metrics (Recall@k, NMI of k-means clusters, mAP@R; faiss), recall against exact search, and
the parity of two embedding sets. No torch: serving evaluates exported models with these too."""

from __future__ import annotations

import faiss
import numpy as np


def nearest_neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each row's k nearest other rows by inner product (cosine for unit rows)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    k = min(k + 1, len(embeddings))
    _, neighbours = index.search(embeddings, k)
    return drop_self(neighbours)


def drop_self(neighbours: np.ndarray) -> np.ndarray:
    """Remove each query from its own result list (it need not come first when there are ties)."""
    n, k = neighbours.shape
    is_self = neighbours == np.arange(n)[:, None]
    # Rows where self is absent drop their last entry instead, keeping a rectangular array.
    is_self[~is_self.any(axis=1), -1] = True
    return neighbours[~is_self].reshape(n, k - 1)


def recall_at_k(neighbour_labels: np.ndarray, labels: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Fraction of queries with a same-class item among their k nearest neighbours."""
    hits = neighbour_labels == labels[:, None]  # (N, K)
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def map_at_r(neighbour_labels: np.ndarray, labels: np.ndarray) -> float:
    """mAP@R (Musgrave et al. 2020): R = number of other items of the query's class."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1  # (N,)
    max_r = neighbour_labels.shape[1]
    ranks = np.arange(1, max_r + 1)
    hits = (neighbour_labels == labels[:, None]) & (ranks[None, :] <= r[:, None])
    precision = np.cumsum(hits, axis=1) / ranks
    valid = r > 0
    ap = (precision * hits).sum(axis=1)[valid] / np.minimum(r[valid], max_r)
    return float(ap.mean()) if valid.any() else 0.0


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """NMI between k-means clusters (k = number of classes) and the labels."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    num_classes = len(np.unique(labels))
    kmeans = faiss.Kmeans(embeddings.shape[1], num_classes, niter=50, seed=seed, verbose=False)
    kmeans.train(embeddings)
    _, clusters = kmeans.index.search(embeddings, 1)
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(labels, clusters[:, 0]))


def evaluate_embeddings(embeddings: np.ndarray, labels: np.ndarray, recall_ks=(1, 2, 4, 8)) -> dict[str, float]:
    """All metrics of one embedding set: ``recall@k``, ``nmi``, ``map@r``."""
    labels = np.asarray(labels)
    max_r = int(np.unique(labels, return_counts=True)[1].max()) - 1
    neighbours = nearest_neighbours(embeddings, max(max(recall_ks), max_r, 1))
    neighbour_labels = labels[neighbours]
    results = {f"recall@{k}": v for k, v in recall_at_k(neighbour_labels, labels, list(recall_ks)).items()}
    results["nmi"] = nmi(embeddings, labels)
    results["map@r"] = map_at_r(neighbour_labels, labels)
    return results


def recall_against_exact(approximate_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Fraction of the exact top k that the approximate top k also returns (recall@k vs exact)."""
    hits = (approximate_ids[:, :k, None] == exact_ids[:, None, :k]).any(axis=2)
    return float(hits.sum() / exact_ids[:, :k].size)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How far two embedding sets (N, d) of the same inputs are apart: max abs difference, min row cosine."""
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosine = (reference * candidate).sum(1) / np.maximum(norms, np.finfo(np.float32).tiny)
    return {"max_abs_diff": float(np.abs(reference - candidate).max()), "min_cosine": float(cosine.min())}
