"""Searching an index: :class:`Searcher`, in Python and behind ``s2sd search``.

The student's top-k comes from the index (faiss, or a Milvus collection). With ``rerank=K`` the student's top-K
is re-scored with the teacher vectors of those K gallery images (the model's largest teacher, exported
``--with-teacher``) and the best k of them returned: close to the teacher's accuracy at close to the student's
cost (bench-latency measures both).

>>> searcher = Searcher("gallery-index")                              # doctest: +SKIP
>>> result = searcher.search(["query.jpg"], k=5, rerank=50)            # doctest: +SKIP
>>> result.paths[0], result.scores[0]                                  # doctest: +SKIP

``k`` and ``rerank`` larger than the gallery are clamped to its size (a gallery of 3 images answers 3 results a
query); values above :data:`MAX_RESULTS` are refused, and so is a request whose results would not fit in the
memory available. Queries are searched in batches, so a re-rank's teacher rows never take more than
:data:`RERANK_BATCH_BYTES` at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..disk_space import human_bytes
from ..errors import S2SDError
from . import ann, knn
from .embedder import Embedder
from .index_dir import FAISS, MANIFEST, MODEL, PATHS, STUDENT, TEACHER, IndexDir

MAX_RESULTS = 10**9  # per query: more than any one index holds
RERANK_BATCH_BYTES = 256 * 2**20  # teacher rows of the shortlists re-scored at once


@dataclass
class SearchResult:
    """Per query: gallery ids (row numbers), their paths and scores (cosine similarities), best first."""

    ids: np.ndarray  # (Q, k) int64; -1 where an approximate index found fewer than k
    scores: np.ndarray  # (Q, k) float32: student scores, or teacher scores after a re-rank
    paths: list[list[str]]
    scored_by: str = "student"  # whose cosine similarities ``scores`` are: "student" or "teacher" (re-ranked)

    def to_json(self, queries: Sequence | None = None) -> list[dict]:
        names = [str(q) for q in queries] if queries is not None else [str(i) for i in range(len(self.ids))]
        return [
            {
                "query": name,
                "scored_by": self.scored_by,
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

    def __init__(
        self, index: str | Path | IndexDir, providers: Sequence[str] | None = None, threads: int | None = None
    ):
        self.index = index if isinstance(index, IndexDir) else IndexDir.open(index)
        manifest = self.index.manifest
        self.dim = manifest["model"]["embedding_dim"]
        self.size = manifest.get("counts", {}).get("images")
        self._embedder_options = (providers, threads)
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        if self.index.backend == "faiss":
            self.store = FaissStore(self.index)
        else:
            from .milvus import MilvusGallery

            backend = manifest["backend"]
            self.store = MilvusGallery.open(backend["uri"], backend["collection"])
            self._check_collection(backend)
        self.teacher_dim = self.store.teacher_dim  # None for a model without teacher, or an index of s2sd embed's .npz
        if self.size is None:  # written before the manifest counted images
            self.size = self.store.count() if self.index.backend != "faiss" else len(self.store.vectors)

    def _check_collection(self, backend: dict) -> None:
        """The collection holds what the manifest says: another index's, or one emptied or refilled outside s2sd,
        is refused instead of searched."""
        stored_id = self.store.metadata().get("index_id")
        index_id = self.index.manifest.get("index_id")
        if stored_id and index_id and stored_id != index_id:
            self.store.close()
            raise S2SDError(
                f"Milvus collection {backend['collection']!r} at {backend['uri']} belongs to another index "
                f"(id {stored_id}, not {index_id}); rebuild {self.index.path}"
            )
        rows = self.store.count()
        if self.size is not None and rows != self.size:
            self.store.close()
            raise S2SDError(
                f"Milvus collection {backend['collection']!r} at {backend['uri']} holds {rows} rows but "
                f"{self.index.path}/manifest.json records {self.size} images: it was changed outside s2sd; "
                f"rebuild the index with `s2sd index build ... --force`"
            )

    def close(self) -> None:
        """Release the index's files (and a Milvus connection)."""
        if hasattr(self.store, "close"):
            self.store.close()
        self.index.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        """The model that embedded the gallery (a copy inside the index), loaded on first use."""
        with self._embedder_lock:
            if self._embedder is None:
                providers, threads = self._embedder_options
                self.index.check_whole(MODEL)
                self._embedder = Embedder(self.index.model_file(), providers=providers, threads=threads)
        return self._embedder

    def search(self, queries, k: int = 10, rerank: int | None = None) -> SearchResult:
        """Embed ``queries`` with the index's model and search; ``rerank=K`` re-ranks the student's top-K."""
        self._check_request(k, rerank, len(queries) if isinstance(queries, (list, tuple)) else 1)  # before the model
        if rerank:
            student, teacher = self.embedder.embed(queries, with_teacher=True)
            return self.search_embeddings(student, teacher, k, rerank)
        return self.search_embeddings(self.embedder.embed(queries), None, k)

    def _check_request(self, k: int, rerank: int | None, queries: int) -> tuple[int, int | None]:
        """``k`` and ``rerank`` checked, then clamped to the gallery's size; refused when the results of
        ``queries`` queries would not fit in the memory available."""
        for name, value in (("k", k), ("rerank", rerank)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
                raise S2SDError(f"{name} must be a whole number, got {value!r}")
            if value is not None and not 1 <= value <= MAX_RESULTS:
                raise S2SDError(
                    f"--{name} {value} is out of range: give 1 to {MAX_RESULTS:,} (this index holds {self.size} "
                    f"images; larger values are answered with all of them)"
                )
        if rerank and self.teacher_dim is None:
            raise S2SDError(
                f"{self.index.path} has no teacher vectors (its model was exported without --with-teacher, or it "
                f"was built from the .npz files of `s2sd embed`), so it cannot re-rank"
            )
        if rerank and rerank < k:
            raise S2SDError(f"--rerank {rerank} must be at least --k {k}: the re-rank chooses k of the top {rerank}")
        k, rerank = min(k, self.size), (min(rerank, self.size) if rerank else rerank)
        needed = queries * max(k, rerank or 0) * 12  # ids (8 bytes) and scores (4 bytes) of every result
        available = available_memory()
        if available is not None and needed > available // 2:
            raise S2SDError(
                f"{queries} queries x {max(k, rerank or 0)} results need {human_bytes(needed)}, more than half the "
                f"{human_bytes(available)} of memory available; ask for fewer results or search fewer queries at once"
            )
        return k, rerank

    def search_embeddings(
        self, student: np.ndarray, teacher: np.ndarray | None = None, k: int = 10, rerank: int | None = None
    ) -> SearchResult:
        """Search with student embeddings (Q, d); with ``rerank=K`` also the teacher embeddings (Q, d_t)."""
        student = self._check(student, self.dim, "student")
        k, rerank = self._check_request(k, rerank, len(student))
        if not rerank:
            scores, ids = self.store.search(student, k)
            return SearchResult(ids, scores, self._paths(ids))
        teacher = self._check(teacher, self.teacher_dim, "teacher")
        if len(teacher) != len(student):
            raise S2SDError(f"got {len(teacher)} teacher embeddings for {len(student)} student embeddings")
        batch = max(1, RERANK_BATCH_BYTES // (rerank * self.teacher_dim * 4))
        parts = [
            self._rerank(student[i : i + batch], teacher[i : i + batch], k, rerank)
            for i in range(0, len(student), batch)
        ]
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
        ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
        return SearchResult(ids, scores, self._paths(ids), scored_by="teacher")

    def _rerank(self, student: np.ndarray, teacher: np.ndarray, k: int, rerank: int) -> tuple[np.ndarray, np.ndarray]:
        _, candidates = self.store.search(student, rerank)  # (Q, K)
        scores = np.einsum("qkd,qd->qk", self.store.teacher_vectors(candidates), teacher)
        scores[candidates < 0] = -np.inf
        best_scores, ids = knn.rerank(candidates, scores, k)
        return best_scores.astype(np.float32), ids

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


def check_rows(index: IndexDir, indexed: int, gallery) -> None:
    """Every file of a faiss-backend index describes the same images: a row without a path (or a path without a
    vector) is refused instead of answered with an empty path."""
    rows = {STUDENT: len(gallery.student), FAISS: indexed, PATHS: len(gallery.paths)}
    if gallery.teacher is not None:
        rows[TEACHER] = len(gallery.teacher)
    expected = index.manifest.get("counts", {}).get("images", rows[STUDENT])
    wrong = [f"{name} ({count} rows)" for name, count in rows.items() if count != expected]
    if wrong:
        raise S2SDError(
            f"index {index.path} is damaged: {', '.join(wrong)} — its {MANIFEST} records {expected} images; "
            f"rebuild the index"
        )


def available_memory() -> int | None:
    """Bytes of memory the system can give without swapping (Linux ``MemAvailable``); ``None`` elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class FaissStore:
    """The faiss backend: the index, the memory-mapped teacher vectors and the paths of one index directory."""

    def __init__(self, index: IndexDir):
        self.index = index.faiss_index()
        self.refine = index.manifest["index"].get("refine", 0)
        gallery = index.gallery(teacher_in_memory=False)
        self.vectors = gallery.student  # memory-mapped: read only for ivf-pq's exact re-scoring
        self.teacher = gallery.teacher
        self.teacher_dim = None if gallery.teacher is None else gallery.teacher.shape[1]
        self._paths = np.array(gallery.paths + [""], dtype=object)  # the last entry answers id -1
        check_rows(index, self.index.ntotal, gallery)

    def count(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return ann.search(self.index, queries, k, self.vectors, self.refine)

    def teacher_vectors(self, ids: np.ndarray) -> np.ndarray:
        """(Q, K, d_t) float32 teacher rows of the ids; rows of -1 (no result) are 0."""
        rows = np.asarray(self.teacher[np.where(ids < 0, 0, ids)], dtype=np.float32)
        rows[ids < 0] = 0
        return rows

    def paths(self, ids: np.ndarray) -> np.ndarray:
        return self._paths[ids]
