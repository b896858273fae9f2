"""Retrieval metrics on unseen classes: Recall@k, NMI of k-means clusters, mAP@R (faiss)."""

from __future__ import annotations

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score


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
