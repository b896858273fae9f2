"""Searching an index: :class:`Searcher`, in Python and behind ``s2sd search``.

The student's top-k comes from the index (faiss, or a Milvus collection). With ``rerank=K`` the student's top-K
is re-scored with the teacher vectors of those K gallery images (the model's largest teacher, exported
``--with-teacher``) and the best k of them returned: close to the teacher's accuracy at close to the student's
cost (bench-latency measures both).

>>> searcher = Searcher("gallery-index")                              # doctest: +SKIP
>>> result = searcher.search(["query.jpg"], k=5, rerank=50)            # doctest: +SKIP
>>> result.paths[0], result.scores[0]                                  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import S2SDError
from . import ann, knn
from .embedder import Embedder
from .index_dir import IndexDir


@dataclass
class SearchResult:
    """Per query: gallery ids (row numbers), their paths and scores (cosine similarities), best first."""

    ids: np.ndarray  # (Q, k) int64; -1 where the gallery has fewer than k images
    scores: np.ndarray  # (Q, k) float32: student scores, or teacher scores after a re-rank
    paths: list[list[str]]

    def to_json(self, queries: Sequence | None = None) -> list[dict]:
        names = [str(q) for q in queries] if queries is not None else [str(i) for i in range(len(self.ids))]
        return [
            {
                "query": name,
                "results": [
                    {"id": int(i), "path": p, "score": float(s)} for i, p, s in zip(ids, paths, scores) if i >= 0
                ],
            }
            for name, ids, paths, scores in zip(names, self.ids, self.paths, self.scores)
        ]


class Searcher:
    """Search an index directory written by ``s2sd index build``; safe to share between threads.

    Queries are anything :class:`Embedder` embeds (paths, PIL images, uint8 arrays, preprocessed float32) for
    :meth:`search`, or embeddings for :meth:`search_embeddings`.
    """

    def __init__(self, index: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.index = IndexDir.open(index)
        manifest = self.index.manifest
        self.dim = manifest["model"]["embedding_dim"]
        self.teacher_dim = manifest["model"]["teacher_dim"]
        self._embedder_options = (providers, threads)
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        if self.index.backend == "faiss":
            self.store = FaissStore(self.index)
        else:
            from .milvus import MilvusGallery

            backend = manifest["backend"]
            self.store = MilvusGallery.open(backend["uri"], backend["collection"])

    @property
    def embedder(self) -> Embedder:
        """The model that embedded the gallery (a copy inside the index), loaded on first use."""
        with self._embedder_lock:
            if self._embedder is None:
                providers, threads = self._embedder_options
                self._embedder = Embedder(self.index.model_path, providers=providers, threads=threads)
        return self._embedder

    def search(self, queries, k: int = 10, rerank: int | None = None) -> SearchResult:
        """Embed ``queries`` with the index's model and search; ``rerank=K`` re-ranks the student's top-K."""
        self._check_request(k, rerank)  # before the model runs
        if rerank:
            student, teacher = self.embedder.embed(queries, with_teacher=True)
            return self.search_embeddings(student, teacher, k, rerank)
        return self.search_embeddings(self.embedder.embed(queries), None, k)

    def _check_request(self, k: int, rerank: int | None) -> None:
        if k < 1:
            raise S2SDError(f"k must be at least 1, got {k}")
        if rerank and self.teacher_dim is None:
            raise S2SDError(
                f"{self.index.path} has no teacher vectors: its model was exported without "
                f"--with-teacher, so it cannot re-rank"
            )
        if rerank and rerank < k:
            raise S2SDError(f"--rerank {rerank} must be at least --k {k}: the re-rank chooses k of the top {rerank}")

    def search_embeddings(
        self, student: np.ndarray, teacher: np.ndarray | None = None, k: int = 10, rerank: int | None = None
    ) -> SearchResult:
        """Search with student embeddings (Q, d); with ``rerank=K`` also the teacher embeddings (Q, d_t)."""
        student = self._check(student, self.dim, "student")
        self._check_request(k, rerank)
        if not rerank:
            scores, ids = self.store.search(student, k)
            return SearchResult(ids, scores, self._paths(ids))
        teacher = self._check(teacher, self.teacher_dim, "teacher")
        _, candidates = self.store.search(student, rerank)  # (Q, K)
        scores = np.einsum("qkd,qd->qk", self.store.teacher_vectors(candidates), teacher)
        scores[candidates < 0] = -np.inf
        best_scores, ids = knn.rerank(candidates, scores, k)
        return SearchResult(ids, best_scores.astype(np.float32), self._paths(ids))

    def _paths(self, ids: np.ndarray) -> list[list[str]]:
        return self.store.paths(ids).tolist()

    @staticmethod
    def _check(vectors, dim: int, name: str) -> np.ndarray:
        vectors = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise S2SDError(f"{name} embeddings must have shape (Q, {dim}), got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise S2SDError(f"{name} embeddings contain NaN or infinite values")
        return vectors


class FaissStore:
    """The faiss backend: the index, the memory-mapped teacher vectors and the paths of one index directory."""

    def __init__(self, index: IndexDir):
        self.index = index.faiss_index()
        self.refine = index.manifest["index"].get("refine", 0)
        gallery = index.gallery(teacher_in_memory=False)
        self.vectors = gallery.student  # memory-mapped: read only for ivf-pq's exact re-scoring
        self.teacher = gallery.teacher
        self._paths = np.array(gallery.paths + [""], dtype=object)  # the last entry answers id -1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return ann.search(self.index, queries, k, self.vectors, self.refine)

    def teacher_vectors(self, ids: np.ndarray) -> np.ndarray:
        """(Q, K, d_t) float32 teacher rows of the ids; rows of -1 (no result) are 0."""
        rows = np.asarray(self.teacher[np.where(ids < 0, 0, ids)], dtype=np.float32)
        rows[ids < 0] = 0
        return rows

    def paths(self, ids: np.ndarray) -> np.ndarray:
        return self._paths[ids]
