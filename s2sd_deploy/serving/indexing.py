"""``s2sd index build / add / merge``: embed a gallery and write a searchable index directory.

A build embeds its images in chunks; each completed chunk is written (atomically) to the index's ``.build/``
folder, so a build that is interrupted resumes from its last completed chunk when run again with the same
images and model. Shards built on several machines (``--shard K/N``) merge into the index a single build
would have made: the same vectors in the same order, the same index.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np

from ..atomic_files import atomic_path, check_output_folder
from ..errors import S2SDError
from . import ann
from .embedder import Embedder, embed_files
from .images import list_images, shard_of
from .index_config import MILVUS, IndexConfig
from .index_dir import SKIPPED, Gallery, IndexDir, file_sha256, model_description, write_jsonl


def build_index(
    inputs: list, model: Path, out: Path, cfg: IndexConfig, shard: tuple[int, int] | None = None, progress=None
) -> dict:
    """Embed the images (files and folders) with ``model`` and write the index directory ``out``."""
    cfg.validate(shard)
    check_output_folder(out, "--out")
    embedder = Embedder(model, batch_size=cfg.batch_size)
    sha256 = file_sha256(embedder.path)
    paths = shard_of(list_images(inputs), shard)
    index = IndexDir(out)
    gallery, timing = embed_in_chunks(index, embedder, sha256, paths, cfg, shard, progress)
    manifest = {
        "model": model_description(embedder, sha256),
        "shard": list(shard) if shard else None,
        "build": {**timing, "chunk_size": cfg.chunk_size, "options": asdict(cfg)},
    }
    return write_index(index, gallery, embedder.path, cfg, manifest)


def embed_in_chunks(
    index: IndexDir, embedder: Embedder, sha256: str, paths: list[Path], cfg: IndexConfig, shard, progress
) -> tuple[Gallery, dict]:
    """The gallery's embeddings, chunk by chunk, and the timing of those embedded now; chunks completed by an
    interrupted build are read back (and counted as resumed)."""
    plan = {
        "model_sha256": sha256,
        "paths": [str(p) for p in paths],
        "chunk_size": cfg.chunk_size,
        "skip_bad_images": cfg.skip_bad_images,
        "shard": list(shard) if shard else None,
    }
    index.start_build(plan)
    with_teacher = embedder.teacher_dim is not None
    parts, embedded, seconds = [], 0, 0.0
    for number, start in enumerate(range(0, len(paths), cfg.chunk_size)):
        chunk = paths[start : start + cfg.chunk_size]
        chunk_file = index.chunk_file(number)
        if not chunk_file.is_file():
            started = time.perf_counter()
            result = embed_files(embedder, chunk, cfg.workers, cfg.skip_bad_images, None, with_teacher)
            save_chunk(chunk_file, result)
            seconds += time.perf_counter() - started
            embedded += len(chunk)
        parts.append(load_chunk(chunk_file))
        if progress:
            progress(len(chunk))
    if not parts or not sum(len(p) for p in parts):
        raise S2SDError("no image of the gallery could be embedded")
    timing = {
        "embed_s": round(seconds, 2),
        "images_embedded": embedded,
        "images_resumed": len(paths) - embedded,
        "images_per_s": round(embedded / seconds, 1) if embedded else None,
    }
    return Gallery.concatenate(parts), timing


def save_chunk(path: Path, result) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        teacher = {} if result.teacher is None else {"teacher": result.teacher.astype(np.float16)}
        np.savez(
            handle,
            student=result.embeddings,
            paths=np.array([str(p) for p in result.paths], dtype=str),
            skipped=np.array([[str(p), why] for p, why in result.skipped], dtype=str).reshape(-1, 2),
            **teacher,
        )


def load_chunk(path: Path) -> Gallery:
    with np.load(path, allow_pickle=False) as data:
        teacher = data["teacher"] if "teacher" in data else None
        return Gallery(data["student"], teacher, data["paths"].tolist(), data["skipped"].tolist())


def write_index(index: IndexDir, gallery: Gallery, model: Path, cfg: IndexConfig, manifest: dict) -> dict:
    """Build (and tune) the faiss index over the gallery, or fill the Milvus collection, then write the directory."""
    counts = {"images": len(gallery), "skipped": len(gallery.skipped)}
    manifest = {**manifest, "counts": counts}
    if cfg.backend == MILVUS:
        return write_milvus(index, gallery, model, cfg, manifest)
    kind = cfg.index
    if kind == "auto":
        kind = ann.choose_kind(len(gallery), gallery.student.shape[1], cfg.memory_budget_mb * 2**20)
    started = time.perf_counter()
    built, factory = ann.build(gallery.student, kind, cfg.seed)
    tuned = ann.tune(built, kind, factory, gallery.student, cfg.min_recall, cfg.recall_queries, cfg.seed)
    build = {**manifest.get("build", {}), "index_s": round(time.perf_counter() - started, 2)}
    backend = {"name": "faiss", "faiss_version": faiss.__version__}
    return index.write(
        gallery,
        model,
        tuned,
        {**manifest, "backend": backend, "build": build, "index_requested": cfg.index, "min_recall": cfg.min_recall},
    )


def write_milvus(index: IndexDir, gallery: Gallery, model: Path, cfg: IndexConfig, manifest: dict) -> dict:
    from .milvus import MilvusGallery

    kind = "flat" if cfg.index == "auto" else cfg.index.split("-")[0]
    teacher_dim = None if gallery.teacher is None else gallery.teacher.shape[1]
    # A Milvus Lite file is found from any working directory; a server's URI stays as given.
    uri = cfg.uri if "://" in cfg.uri else str(Path(cfg.uri).resolve())
    student_dim = gallery.student.shape[1]
    with MilvusGallery.create(
        uri, cfg.collection, student_dim, teacher_dim, metadata=manifest["model"], index=kind, overwrite=True
    ) as store:
        teacher = None if gallery.teacher is None else np.asarray(gallery.teacher, dtype=np.float32)
        store.add(np.arange(len(gallery), dtype=np.int64), gallery.student, teacher, gallery.paths)
    backend = {"name": MILVUS, "uri": uri, "collection": cfg.collection}
    with index.replacement() as new:
        write_jsonl(new.path / SKIPPED, gallery.skipped)
        new.copy_model(model)
        return new.write_manifest({**manifest, "backend": backend, "index": {"kind": kind, "milvus": True}})


def add_to_index(index_path: Path, inputs: list, cfg: IndexConfig, progress=None) -> dict:
    """Embed more images with the index's own model and rebuild its index over old and new vectors.
    Files already in the index are left out (and counted)."""
    index = IndexDir.open(index_path)
    if index.backend != "faiss":
        raise S2SDError(
            f"{index.path} is a {index.backend} index, and `s2sd index add` extends faiss indexes only: rebuild it "
            f"with `s2sd index build --backend {index.backend}` over all its images, old and new"
        )
    existing = index.gallery()
    known = set(existing.paths)
    paths = [p for p in list_images(inputs) if str(p) not in known]
    if not paths:
        raise S2SDError(f"every image given is already in {index.path}")
    embedder = Embedder(index.model_path, batch_size=cfg.batch_size)
    started = time.perf_counter()
    with_teacher = embedder.teacher_dim is not None
    result = embed_files(embedder, paths, cfg.workers, cfg.skip_bad_images, progress, with_teacher)
    added = Gallery(
        result.embeddings,
        None if result.teacher is None else result.teacher.astype(np.float16),
        [str(p) for p in result.paths],
        [[str(p), why] for p, why in result.skipped],
    )
    gallery = Gallery.concatenate([existing, added])
    manifest = {k: v for k, v in index.manifest.items() if k not in ("format", "files", "written", "index")}
    manifest["added"] = manifest.get("added", []) + [
        {"images": len(added), "skipped": len(added.skipped), "embed_s": round(time.perf_counter() - started, 2)}
    ]
    cfg = replace(cfg, index=index.manifest.get("index_requested", index.manifest["index"]["kind"]))
    return write_index(index, gallery, index.model_path, cfg, manifest)


def merge_indexes(out: Path, shards: list[Path], cfg: IndexConfig) -> dict:
    """Join shard indexes (built with the same model) into one, in the order given: the index a single build
    over all their images would have made."""
    cfg.validate()
    check_output_folder(out, "--out")
    opened = [IndexDir.open(path) for path in shards]
    models = {index.manifest["model"]["file_sha256"] for index in opened}
    if len(models) != 1:
        raise S2SDError(f"the shards were embedded by {len(models)} different models; merge only shards of one model")
    if any(index.backend != "faiss" for index in opened):
        raise S2SDError("only faiss indexes merge; build a Milvus index in one `s2sd index build` over all the images")
    gallery = Gallery.concatenate([index.gallery() for index in opened])
    first = opened[0].manifest
    manifest = {
        "model": first["model"],
        "merged_from": [str(p) for p in shards],
        "build": {"embed_s": sum(i.manifest["build"].get("embed_s", 0) for i in opened)},
    }
    return write_index(IndexDir(out), gallery, opened[0].model_path, cfg, manifest)
