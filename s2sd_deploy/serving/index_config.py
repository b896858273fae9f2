"""Options of ``s2sd index build / add / merge`` (no faiss or onnxruntime: the command line checks them at once)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import S2SDError

KINDS = ("flat", "ivf-pq", "ivf-sq8", "hnsw", "auto")
MILVUS = "milvus"
DEDUPE = ("path", "content", "none")
MILVUS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")


@dataclass
class IndexConfig:
    """Options of ``s2sd index build`` (and of ``add`` and ``merge``, which rebuild or extend the index)."""

    index: str = "auto"  # flat | ivf-pq | ivf-sq8 | hnsw | auto
    min_recall: float = 0.95  # an approximate index must find this share of the exact top 10
    memory_budget_mb: int = 4096  # auto: the largest index it may choose
    chunk_size: int = 1024  # images embedded between resume points
    batch_size: int = 32
    workers: int = 4  # threads decoding images ahead of the model
    skip_bad_images: bool = False
    recall_queries: int = 1000  # gallery vectors used as queries to measure recall
    seed: int = 0
    backend: str = "faiss"  # faiss | milvus
    uri: str | None = None  # milvus: a Milvus Lite file, or http://host:19530
    collection: str | None = None  # milvus: an alias naming the index's current collection, for other clients
    dedupe: str = "path"  # path | content | none: files already in the gallery are left out

    def validate(self, shard: tuple[int, int] | None = None) -> None:
        if self.index not in KINDS:
            raise S2SDError(f"invalid --index {self.index!r}; choose one of: {', '.join(KINDS)}")
        if not 0 < self.min_recall <= 1:
            raise S2SDError(f"--min-recall must be above 0 and at most 1, got {self.min_recall}")
        for name in ("memory_budget_mb", "chunk_size", "batch_size", "workers", "recall_queries"):
            if getattr(self, name) < 1:
                raise S2SDError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.dedupe not in DEDUPE:
            raise S2SDError(f"invalid --dedupe {self.dedupe!r}; choose one of: {', '.join(DEDUPE)}")
        if self.collection is not None and not MILVUS_NAME.fullmatch(self.collection):
            raise S2SDError(
                f"invalid --collection {self.collection!r}: a Milvus name is letters, digits and underscores, "
                f"starting with a letter or underscore, at most 200 characters"
            )
        if self.backend not in ("faiss", MILVUS):
            raise S2SDError(f"invalid --backend {self.backend!r}; choose one of: faiss, milvus")
        if self.backend == MILVUS and not self.uri:
            raise S2SDError("--backend milvus needs --uri: a Milvus Lite file (e.g. gallery.db) or http://host:19530")
        if self.backend == MILVUS and shard:  # each build fills the collection afresh, ids from 0
            raise S2SDError(
                "--shard works with the faiss backend only: a Milvus build replaces its whole collection; "
                "index all the images in one build"
            )
