"""Exact k-NN building blocks in numpy and faiss, without torch: top-k selection and shortlist re-ranking.

At low dimension scoring a gallery is cheap and selecting the top k of N scores dominates, so
:func:`grouped_topk` selects in two stages: split the N scores into groups, take each group's maximum,
keep the k groups with the largest maxima, then the top k among those groups' members. It is exact: an
item among the top k lies in a group whose maximum is at least the k-th best score, and at most k groups
have such a maximum. Group j holds the strided columns j, j + G, j + 2G, ... (G groups), so the maxima
are an elementwise maximum over contiguous rows, which numpy vectorises; a maximum over short
contiguous runs was several times slower.

Re-ranking a student shortlist with the teacher reads each query's K teacher rows in place through
faiss (a numpy gather copies them first, which was slower), in one thread: see :func:`one_openmp_thread`.
"""

from __future__ import annotations

from contextlib import contextmanager

import faiss
import numpy as np


def group_size(n: int, k: int) -> int:
    """Scores per group: the power of two nearest sqrt(n / k) / 3, between 8 and 512. sqrt(n / k) balances
    the two stages (n / group maxima to rank against k * group candidates); the maxima pass is the
    cheaper one per score, and a third of it measured best or near it for k 10..100, n 1e4..1e5."""
    return int(2 ** np.clip(np.round(np.log2(np.sqrt(n / k) / 3)), 3, 9))


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, indices) of the k largest scores per row (Q, N), best first."""
    top = np.argpartition(scores, -k, axis=1)[:, -k:]
    values = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(top, order, axis=1)


def grouped_topk(scores: np.ndarray, k: int, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact :func:`topk` of scores (Q, N) in two cheap stages (see the module docstring)."""
    queries, n = scores.shape
    groups = n // (group or group_size(n, k))
    if groups < k:  # too few groups to gain anything
        return topk(scores, min(k, n))
    full = n // groups * groups
    maxima = scores[:, :full].reshape(queries, -1, groups).max(axis=1)  # (Q, G): group j = columns j, j + G, ...
    best = np.argpartition(maxima, -k, axis=1)[:, -k:]  # (Q, k), unordered
    columns = (best[:, :, None] + groups * np.arange(full // groups)).reshape(queries, -1)
    if full < n:  # the ragged tail is always a candidate
        columns = np.concatenate([columns, np.broadcast_to(np.arange(full, n), (queries, n - full))], axis=1)
    values, order = topk(np.take_along_axis(scores, columns, axis=1), k)
    return values, np.take_along_axis(columns, order, axis=1)


def inner_products_by_id(gallery: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(Q, K) inner products of each query (Q, D) with its K gallery rows ``ids`` (Q, K), read in place.
    ``gallery`` must be C-contiguous float32 (N, D)."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    scores = np.empty(ids.shape, dtype=np.float32)
    with one_openmp_thread():
        faiss.fvec_inner_products_by_idx(
            faiss.swig_ptr(scores),
            faiss.swig_ptr(queries),
            faiss.swig_ptr(gallery),
            faiss.swig_ptr(ids),
            queries.shape[1],
            *ids.shape,
        )
    return scores


def rerank(candidates: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row's candidates (Q, K) by ``scores`` (Q, K): (scores, ids), best first."""
    values, order = topk(scores, min(k, scores.shape[1]))
    return values, np.take_along_axis(candidates, order, axis=1)


@contextmanager
def openmp_threads(count: int):
    """Run faiss with at most ``count`` OpenMP threads in this thread. Its idle workers keep spinning after a
    parallel region and take a core from the next numpy BLAS or onnxruntime call on small machines: a batch-1
    query through the Searcher took 7.4 ms with faiss's default threads and 2.5 ms with one (glyphs model,
    1e5 vectors); faiss splits a search over its queries, so threads beyond the queries only spin."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, min(count, threads)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def one_openmp_thread():
    """:func:`openmp_threads` (1): a re-rank is too small to split."""
    return openmp_threads(1)
