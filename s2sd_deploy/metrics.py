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
    """Fraction of queries with a same-class item among their k nearest neighbours (0 for no query)."""
    hits = neighbour_labels == labels[:, None]  # (N, K)
    return {k: float(hits[:, :k].any(axis=1).mean()) if len(labels) else 0.0 for k in ks}


def with_positives(labels: np.ndarray, gallery_labels: np.ndarray | None = None) -> np.ndarray:
    """Which queries have another item of their class to find (N,) bool: in ``gallery_labels``, or, leave-one-out,
    among the other ``labels``. Recall@k of a query without one is undefined, so the metrics leave it out."""
    if gallery_labels is None:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        return counts[inverse] > 1
    return np.isin(labels, gallery_labels)


def map_at_r(neighbour_labels: np.ndarray, labels: np.ndarray, r: np.ndarray | None = None) -> float:
    """mAP@R (Musgrave et al. 2020). R is the number of relevant items of each query: by default the other items
    of its class (leave-one-out), or given (``r`` (N,), e.g. gallery items of the class)."""
    if r is None:
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
    # min_points_per_centroid=1: faiss otherwise warns ("please provide at least N training points") at every
    # evaluation of a split with few images per class, which is the usual case in retrieval benchmarks.
    kmeans = faiss.Kmeans(
        embeddings.shape[1], num_classes, niter=50, seed=seed, verbose=False, min_points_per_centroid=1
    )
    kmeans.train(embeddings)
    _, clusters = kmeans.index.search(embeddings, 1)
    return normalized_mutual_information(np.asarray(labels), clusters[:, 0])


def normalized_mutual_information(labels: np.ndarray, clusters: np.ndarray) -> float:
    """I(labels; clusters) / mean(H(labels), H(clusters)) (scikit-learn's default normalisation), from the
    contingency table: numpy only, so evaluation needs no scikit-learn on a serving machine."""
    _, label_ids = np.unique(labels, return_inverse=True)
    _, cluster_ids = np.unique(clusters, return_inverse=True)
    table = np.zeros((label_ids.max() + 1, cluster_ids.max() + 1))
    np.add.at(table, (label_ids, cluster_ids), 1)
    joint = table / table.sum()
    p_label, p_cluster = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    mutual = (joint[nonzero] * np.log(joint[nonzero] / np.outer(p_label, p_cluster)[nonzero])).sum()
    entropy = [-(p[p > 0] * np.log(p[p > 0])).sum() for p in (p_label, p_cluster)]
    denominator = np.mean(entropy)
    return float(mutual / denominator) if denominator > 0 else 1.0


def evaluate_embeddings(embeddings: np.ndarray, labels: np.ndarray, recall_ks=(1, 2, 4, 8)) -> dict[str, float]:
    """All metrics of one embedding set, each item a query against the others: ``recall@k``, ``nmi``, ``map@r``.
    An item alone in its class is no query of Recall@k or mAP@R (it has nothing to find) but stays in the gallery."""
    labels = np.asarray(labels)
    max_r = int(np.unique(labels, return_counts=True)[1].max()) - 1
    neighbours = nearest_neighbours(embeddings, max(max(recall_ks), max_r, 1))
    neighbour_labels = labels[neighbours]
    queries = with_positives(labels)
    recalls = recall_at_k(neighbour_labels[queries], labels[queries], list(recall_ks))
    results = {f"recall@{k}": v for k, v in recalls.items()}
    results["nmi"] = nmi(embeddings, labels)
    results["map@r"] = map_at_r(neighbour_labels, labels)
    return results


def evaluate_query_gallery(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    recall_ks=(1, 2, 4, 8),
) -> dict[str, float]:
    """Queries against a separate gallery: ``recall@k``, ``map@r`` (R: gallery items of the query's class) and
    ``nmi`` of k-means over queries and gallery together. Queries whose class the gallery lacks are left out of
    Recall@k and mAP@R."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    classes, counts = np.unique(gallery_labels, return_counts=True)
    r = np.zeros(len(query_labels), dtype=int)
    known = np.isin(query_labels, classes)
    r[known] = counts[np.searchsorted(classes, query_labels[known])]
    k = min(len(gallery_labels), max(max(recall_ks), int(r.max(initial=1))))
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    neighbour_labels = gallery_labels[index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]]
    counted = with_positives(query_labels, gallery_labels)
    recalls = recall_at_k(neighbour_labels[counted], query_labels[counted], list(recall_ks))
    results = {f"recall@{k}": v for k, v in recalls.items()}
    results["nmi"] = nmi(np.concatenate([queries, gallery]), np.concatenate([query_labels, gallery_labels]))
    results["map@r"] = map_at_r(neighbour_labels, query_labels, r)
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
