"""``s2sd index build / add / merge``: embed a gallery and write a searchable index directory.

A build embeds its images in chunks; each completed chunk is written (atomically, with its checksum) to the
index's ``.build/`` folder, so a build that is interrupted resumes from its last completed chunk when run again
with the same images and model (a damaged chunk is embedded again). Shards built on several machines
(``--shard K/N``) merge into the index a single build would have made: the same vectors in the same order, the
same index. A build also takes the ``.npz`` files ``s2sd embed`` writes, made with the same model.

Every command holds the index's lock while it runs, writes only into a folder that is new, empty or its own
(:mod:`s2sd_deploy.output_folders`), checks the disk has room for what it will write, stores each image by its
absolute, resolved path and leaves out files already in the gallery (``--dedupe``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import faiss
import numpy as np

from ..disk_space import check_free_space, disk_errors
from ..errors import Interrupted, S2SDError
from ..output_folders import claim_output_folder
from . import ann
from .embedder import Embedder, embed_files
from .images import list_images, shard_of
from .index_config import MILVUS, IndexConfig
from .index_dir import MANIFEST, MODEL, OWN_NAMES, SKIPPED, Gallery, IndexDir, file_sha256, model_description

log = logging.getLogger(__name__)

WHAT = "an s2sd index"
NPZ_SKIPPED = "did not decode (s2sd embed)"
MILVUS_PREFIX = "s2sd_"
KEPT_OUT_OF_COPIES = ("format", "files", "written", "index", "version_id", "package_version")  # add: per version


# --- the three commands -----------------------------------------------------------------------------------------
def build_index(
    inputs: list,
    model: Path,
    out: Path,
    cfg: IndexConfig,
    shard: tuple[int, int] | None = None,
    progress=None,
    force: bool = False,
) -> dict:
    """Embed the images (files and folders) with ``model``, or read the ``.npz`` files ``s2sd embed`` wrote with
    it, and write the index directory ``out``. ``progress(total, description)`` makes a progress bar (a context
    manager with ``update(n)``); ``force`` replaces an index already there."""
    cfg.validate(shard)
    embeddings = embeddings_files(inputs)
    if embeddings and shard:
        raise S2SDError("--shard slices images; .npz files are shards already: pass them all, in order")
    claim_index_folder(out, inputs, force)
    index = IndexDir(out)
    with index.lock():
        claim_index_folder(out, inputs, force)  # again, now that no other writer can change it
        previous = previous_manifest(index)
        index_id = (previous or {}).get("index_id") or uuid.uuid4().hex
        if cfg.backend == MILVUS:
            check_alias_is_ours(cfg, index_id)
        embedder = Embedder(model, batch_size=cfg.batch_size)
        sha256 = file_sha256(embedder.path)
        if embeddings:
            gallery, skipped_duplicates = gallery_from_embeddings(embeddings, embedder, sha256, cfg.dedupe)
            needed = estimated_bytes(len(gallery), embedder, gallery.paths, cfg=cfg)
            check_free_space(out, needed, "--out")
            timing = {"embed_s": 0.0, "images_embedded": 0, "images_resumed": 0, "images_per_s": None}
            resume = f"{out} is unchanged; run the same command again"
        else:
            paths, skipped_duplicates = unique_files(list_images(inputs), set(), cfg)
            paths = shard_of(paths, checked_shard(shard, len(paths)))
            needed = estimated_bytes(len(paths), embedder, paths, chunks=True, cfg=cfg)
            check_free_space(out, needed, "--out")
            resume = (
                f"{out} is unchanged and the images embedded so far are kept in {out / '.build'}; run the same "
                f"command again to resume"
            )
            with interrupted(resume), disk_errors(out / ".build", after="; the completed chunks are kept"):
                gallery, timing = embed_in_chunks(index, embedder, sha256, paths, cfg, shard, progress)
        manifest = {
            "index_id": index_id,
            "model": model_description(embedder, sha256),
            "paths": "absolute",
            "shard": list(shard) if shard else None,
            "build": {**timing, "chunk_size": cfg.chunk_size, "options": asdict(cfg)},
            "duplicates_skipped": skipped_duplicates,
        }
        with interrupted(resume):
            kept = f"; {resume}"
            return write_index(index, gallery, embedder.path, sha256, cfg, manifest, previous, kept, needed)


def add_to_index(index_path: Path, inputs: list, cfg: IndexConfig, progress=None) -> dict:
    """Embed more images with the index's own model and rebuild its index over old and new vectors. Files already
    in the index are left out (``cfg.dedupe``) and counted."""
    cfg.validate()
    IndexDir.open(index_path).close()  # a missing or broken index is reported before anything is locked
    index = IndexDir(index_path)
    check_inputs_outside(index_path, inputs)
    with index.lock(), IndexDir.open(index_path) as current:
        if current.backend != "faiss":
            raise S2SDError(
                f"{index_path} is a {current.backend} index, and `s2sd index add` extends faiss indexes only: "
                f"rebuild it with `s2sd index build --backend {current.backend} --force` over all its images"
            )
        existing = current.gallery()
        candidates = list_images(inputs)
        paths, skipped_duplicates = unique_files(candidates, stored_keys(existing.paths, cfg), cfg)
        if not paths:
            raise S2SDError(
                f"all {len(candidates)} images given are already in {index_path} (same {cfg.dedupe}); nothing was "
                f"added (--dedupe none adds them again)"
            )
        current.check_whole(MODEL)
        embedder = Embedder(current.model_file(), batch_size=cfg.batch_size)
        sha256 = current.manifest["model"]["file_sha256"]
        total = len(existing) + len(paths)
        needed = estimated_bytes(total, embedder, existing.paths + paths, cfg=cfg)
        check_free_space(index_path, needed, "the index")
        unchanged = f"{index_path} is unchanged (nothing was added); run the same command again"
        with interrupted(unchanged):
            started = time.perf_counter()
            with bar(progress, len(paths), "embedding") as update:
                result = embed_files(
                    embedder, paths, cfg.workers, cfg.skip_bad_images, update, embedder.teacher_dim is not None
                )
            added = Gallery(
                result.embeddings,
                None if result.teacher is None else result.teacher.astype(np.float16),
                [str(p) for p in result.paths],
                [[str(p), why] for p, why in result.skipped],
            )
            gallery = Gallery.concatenate([existing, added])
            manifest = {k: v for k, v in current.manifest.items() if k not in KEPT_OUT_OF_COPIES}
            manifest["added"] = manifest.get("added", []) + [
                {
                    "images": len(added),
                    "skipped": len(added.skipped),
                    "duplicates_skipped": skipped_duplicates,
                    "embed_s": round(time.perf_counter() - started, 2),
                }
            ]
            cfg = replace(cfg, index=current.manifest.get("index_requested", current.manifest["index"]["kind"]))
            kept = f"; {index_path} is unchanged (nothing was added)"
            model = current.model_file()
            return write_index(index, gallery, model, sha256, cfg, manifest, current.manifest, kept, needed)


def merge_indexes(out: Path, shards: list[Path], cfg: IndexConfig, force: bool = False) -> dict:
    """Join shard indexes (built with the same model) into one, in the order given: the index a single build
    over all their images would have made. Images in more than one shard are kept once (``cfg.dedupe``)."""
    cfg.validate()
    claim_index_folder(out, shards, force, option="OUT")
    opened = [IndexDir.open(path) for path in shards]
    models = {index.manifest["model"]["file_sha256"] for index in opened}
    if len(models) != 1:
        raise S2SDError(f"the shards were embedded by {len(models)} different models; merge only shards of one model")
    if any(index.backend != "faiss" for index in opened):
        raise S2SDError("only faiss indexes merge; build a Milvus index in one `s2sd index build` over all the images")
    index = IndexDir(out)
    with index.lock(), contextlib.ExitStack() as shards_open:
        for shard in opened:
            shards_open.enter_context(shard)
        claim_index_folder(out, shards, force, option="OUT")
        previous = previous_manifest(index)
        gallery = Gallery.concatenate([shard.gallery() for shard in opened])
        unique, skipped_duplicates = unique_rows(gallery.paths, cfg)
        gallery = gallery.select(unique) if skipped_duplicates else gallery
        first = opened[0]
        first.check_whole(MODEL)
        manifest = {
            "index_id": (previous or {}).get("index_id") or uuid.uuid4().hex,
            "model": first.manifest["model"],
            "paths": "absolute" if all(s.manifest.get("paths") == "absolute" for s in opened) else "as given",
            "merged_from": [str(Path(p).resolve()) for p in shards],
            "build": {"embed_s": sum(i.manifest["build"].get("embed_s", 0) for i in opened)},
            "duplicates_skipped": skipped_duplicates,
        }
        embedder_dims = (first.manifest["model"]["embedding_dim"], first.manifest["model"]["teacher_dim"])
        needed = estimated_bytes(len(gallery), embedder_dims, gallery.paths, cfg=cfg)
        check_free_space(out, needed, "OUT")
        with interrupted(f"{out} is unchanged; run the same command again"):
            sha256, kept = first.manifest["model"]["file_sha256"], f"; {out} is unchanged"
            return write_index(index, gallery, first.model_file(), sha256, cfg, manifest, previous, kept, needed)


def check_inputs_outside(index_path: Path, inputs: list) -> None:
    """Refuse an input that is the index or inside it: the swap of versions would delete it."""
    index = Path(index_path).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if source == index or index in source.parents:
            raise S2SDError(f"the input {given} is inside the index {index_path}; give images from outside it")


# --- output folder, interruption ------------------------------------------------------------------------------
def claim_index_folder(out: Path, inputs: list, force: bool, option: str = "--out") -> Path:
    """The rule of :mod:`s2sd_deploy.output_folders` for an index directory (replaced whole by its versions)."""
    return claim_output_folder(
        out,
        option,
        what=WHAT,
        owner_files=[MANIFEST],
        inputs=inputs,
        force=force,
        resumable=[".build/plan.json"],
        own_names=OWN_NAMES,
        replaced_whole=True,
    )


def previous_manifest(index: IndexDir) -> dict | None:
    """The manifest of the complete index at ``index`` (being replaced), if there is one."""
    if not (index.path / MANIFEST).is_file():
        return None
    try:
        return index.manifest
    except S2SDError:
        return None


@contextmanager
def interrupted(what_was_kept: str):
    """Ctrl-C inside the block: exit 130 with one line saying what was kept and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {what_was_kept}") from None


def bar(progress, total: int, description: str):
    """``progress(total, description)``'s bar, yielding its ``update``; a no-op without one."""
    if progress is None:
        return nullcontext(None)

    @contextmanager
    def opened():
        with progress(total, description) as shown:
            yield shown.update

    return opened()


# --- which files: absolute paths, no duplicates, shards ---------------------------------------------------------
def resolved(path) -> str:
    """The absolute path of ``path`` with symbolic links resolved (a relative one against the current folder)."""
    return str(Path(path).resolve())


def unique_files(paths: list[Path], known: set[str], cfg: IndexConfig) -> tuple[list[Path], int]:
    """``paths`` resolved, in order, without those whose key (resolved path, or content with ``--dedupe content``)
    is in ``known`` or came earlier; and how many were left out."""
    absolute = [Path(resolved(p)) for p in paths]
    if cfg.dedupe == "none":
        return absolute, 0
    keys = content_keys(absolute, cfg.workers) if cfg.dedupe == "content" else [str(p) for p in absolute]
    kept, seen = [], set(known)
    for path, key in zip(absolute, keys):
        if key is None or key not in seen:
            kept.append(path)
            seen.add(key)
    return kept, len(paths) - len(kept)


def stored_keys(paths: list[str], cfg: IndexConfig) -> set[str]:
    """The dedupe keys of an index's stored paths (relative ones, written before paths were stored absolute,
    resolved against the current folder; files no longer there have no content key)."""
    if cfg.dedupe == "none":
        return set()
    absolute = [Path(resolved(p)) for p in paths]
    keys = content_keys(absolute, cfg.workers) if cfg.dedupe == "content" else [str(p) for p in absolute]
    return {key for key in keys if key is not None}


def unique_rows(paths: list[str], cfg: IndexConfig) -> tuple[np.ndarray, int]:
    """Row numbers of the first occurrence of each image (by ``cfg.dedupe``), in order, and how many rows repeat."""
    if cfg.dedupe == "none":
        return np.arange(len(paths)), 0
    absolute = [Path(resolved(p)) for p in paths]
    keys = content_keys(absolute, cfg.workers) if cfg.dedupe == "content" else [str(p) for p in absolute]
    first: dict = {}
    rows = [i for i, key in enumerate(keys) if key is None or first.setdefault(key, i) == i]
    return np.asarray(rows, dtype=np.int64), len(paths) - len(rows)


def content_keys(paths: list[Path], workers: int) -> list[str | None]:
    """SHA-256 of each file's bytes (``None`` for a file that cannot be read), in threads."""

    def digest(path: Path) -> str | None:
        try:
            with open(path, "rb") as handle:
                return hashlib.file_digest(handle, "sha256").hexdigest()
        except OSError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(digest, paths))


def checked_shard(shard: tuple[int, int] | None, images: int) -> tuple[int, int] | None:
    """``--shard K/N`` checked against the number of images before any slice is computed."""
    if shard is None:
        return None
    k, n = shard
    if not 1 <= k <= n:
        raise S2SDError(f"--shard {k}/{n}: K must be between 1 and N")
    if n > images:
        raise S2SDError(f"--shard {k}/{n}: N is more than the {images} images to index; use at most {images} shards")
    return shard


# --- embeddings -------------------------------------------------------------------------------------------------
def embed_in_chunks(
    index: IndexDir, embedder: Embedder, sha256: str, paths: list[Path], cfg: IndexConfig, shard, progress
) -> tuple[Gallery, dict]:
    """The gallery's embeddings, chunk by chunk, and the timing of those embedded now; chunks completed by an
    interrupted build are read back (and counted as resumed), damaged ones embedded again."""
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
    with bar(progress, len(paths), "indexing") as update:
        for number, start in enumerate(range(0, len(paths), cfg.chunk_size)):
            chunk = paths[start : start + cfg.chunk_size]
            data = index.read_chunk(number)
            part = load_chunk(data) if data is not None else None
            if part is None:
                started = time.perf_counter()
                result = embed_files(embedder, chunk, cfg.workers, cfg.skip_bad_images, None, with_teacher)
                index.save_chunk(number, lambda out, result=result: save_chunk(out, result))
                seconds += time.perf_counter() - started
                embedded += len(chunk)
                part = chunk_gallery(result)
            parts.append(part)
            if update:
                update(len(chunk))
    if not parts or not sum(len(p) for p in parts):
        raise S2SDError("no image of the gallery could be embedded")
    timing = {
        "embed_s": round(seconds, 2),
        "images_embedded": embedded,
        "images_resumed": len(paths) - embedded,
        "images_per_s": round(embedded / seconds, 1) if embedded else None,
    }
    return Gallery.concatenate(parts), timing


def save_chunk(handle, result) -> None:
    """A chunk's arrays as one ``.npz``, assembled in memory (a chunk is a few MB; zip needs to seek) and written
    to ``handle`` at once."""
    buffer = io.BytesIO()
    teacher = {} if result.teacher is None else {"teacher": result.teacher.astype(np.float16)}
    np.savez(
        buffer,
        student=result.embeddings,
        paths=np.array([str(p) for p in result.paths], dtype=str),
        skipped=np.array([[str(p), why] for p, why in result.skipped], dtype=str).reshape(-1, 2),
        **teacher,
    )
    handle.write(buffer.getbuffer())


def chunk_gallery(result) -> Gallery:
    teacher = None if result.teacher is None else result.teacher.astype(np.float16)
    return Gallery(result.embeddings, teacher, [str(p) for p in result.paths], [[str(p), w] for p, w in result.skipped])


def load_chunk(data: bytes) -> Gallery | None:
    """A chunk's gallery from its (checksum-verified) bytes; ``None`` if it cannot be read as one."""

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            teacher = stored["teacher"] if "teacher" in stored else None
            return Gallery(stored["student"], teacher, stored["paths"].tolist(), stored["skipped"].tolist())
    except (ValueError, KeyError, OSError, zipfile.BadZipFile):
        return None


def embeddings_files(inputs: list) -> list[Path]:
    """The inputs when they are ``.npz`` files (of ``s2sd embed``); ``[]`` when none is; mixed is an error."""
    npz = [Path(p) for p in inputs if Path(p).suffix == ".npz" and Path(p).is_file()]
    if npz and len(npz) != len(inputs):
        raise S2SDError("give either images (files and folders) or .npz files written by `s2sd embed`, not both")
    return npz


def gallery_from_embeddings(files: list[Path], embedder: Embedder, sha256: str, dedupe: str) -> tuple[Gallery, int]:
    """The gallery of ``.npz`` files written by ``s2sd embed`` with the model of ``embedder``, in the order given;
    paths in them (as ``s2sd embed`` was given them) resolved against the current folder."""
    parts = [read_embeddings(path, embedder, sha256) for path in files]
    gallery = Gallery.concatenate(parts)
    rows, skipped = unique_rows(gallery.paths, IndexConfig(dedupe=dedupe))
    return (gallery.select(rows) if skipped else gallery), skipped


def read_embeddings(path: Path, embedder: Embedder, sha256: str) -> Gallery:
    try:
        with np.load(path, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise S2SDError(f"{path} is not a readable .npz of `s2sd embed` ({error})") from None
    missing = [key for key in ("embeddings", "paths") if key not in stored]
    if missing:
        raise S2SDError(f"{path} has no {', '.join(missing)}: it was not written by `s2sd embed`")
    made_by = {
        "run_id": (str(stored["run_id"]) if "run_id" in stored else None, embedder.metadata.get("run_id")),
        "config_hash": (
            str(stored["config_hash"]) if "config_hash" in stored else None,
            embedder.metadata.get("config_hash"),
        ),
        "model_sha256": (str(stored["model_sha256"]) if "model_sha256" in stored else None, sha256),
    }
    for key, (found, expected) in made_by.items():
        if found is not None and found != expected:
            raise S2SDError(
                f"{path} was embedded by another model ({key} {found!r}, --model {embedder.path} has {expected!r}); "
                f"pass the model that made it, or embed the images with this one"
            )
    vectors, paths = stored["embeddings"], stored["paths"]
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != embedder.dim:
        raise S2SDError(
            f"{path}: embeddings must be float32 (N, {embedder.dim}) for --model {embedder.path}, "
            f"got {vectors.dtype} {vectors.shape}"
        )
    if paths.ndim != 1 or len(paths) != len(vectors):
        raise S2SDError(f"{path}: {len(paths)} paths for {len(vectors)} embeddings; one path per row")
    if not np.isfinite(vectors).all():
        raise S2SDError(f"{path}: embeddings contain NaN or infinite values")
    skipped = [[resolved(p), NPZ_SKIPPED] for p in stored.get("skipped", np.array([], dtype=str)).reshape(-1).tolist()]
    gallery = Gallery(vectors, None, [resolved(p) for p in paths.tolist()], skipped)
    check_same_model(path, gallery, embedder)
    return gallery


SPOT_CHECKS = 4
SAME_MODEL_COSINE = 0.999  # onnxruntime on another provider or machine differs by far less


def check_same_model(path: Path, gallery: Gallery, embedder: Embedder) -> None:
    """Embed a few of the files whose vectors ``path`` holds (those still there) and compare: the run id says
    which run made the vectors, this proves the model gives them."""
    rows = [i for i in range(len(gallery)) if Path(gallery.paths[i]).is_file()][:SPOT_CHECKS]
    if not rows:
        return
    try:
        fresh = embedder.embed([gallery.paths[i] for i in rows])
    except S2SDError:
        return  # a file that no longer decodes proves nothing either way
    cosines = np.einsum("nd,nd->n", fresh, gallery.student[rows])
    if cosines.min() < SAME_MODEL_COSINE:
        worst = rows[int(np.argmin(cosines))]
        raise S2SDError(
            f"{path} was not embedded by --model {embedder.path}: {gallery.paths[worst]} embeds to cosine "
            f"{cosines.min():.3f} of the stored vector; pass the model that made it"
        )


# --- space ------------------------------------------------------------------------------------------------------
def estimated_bytes(images: int, embedder, paths: list, chunks: bool = False, cfg: IndexConfig | None = None) -> int:
    """What a version of an index of ``images`` images writes: vectors, the faiss index (the largest kind: HNSW's
    links), paths and the model copy; with ``chunks``, also a build's resume chunks. ``embedder`` may be an
    :class:`Embedder` or the pair (d, d_t)."""
    if isinstance(embedder, tuple):
        (dim, teacher_dim), model_bytes = embedder, 0
    else:
        dim, teacher_dim, model_bytes = embedder.dim, embedder.teacher_dim, embedder.path.stat().st_size
    teacher_dim = teacher_dim or 0
    path_bytes = sum(len(str(p)) + 4 for p in paths) * images // max(1, len(paths))
    vectors = images * (4 * dim + 2 * teacher_dim)
    milvus = cfg is not None and cfg.backend == MILVUS
    index = images * (4 * (dim + teacher_dim) + 8) if milvus else images * (4 * dim + ann.HNSW_LINKS * 8)
    return (vectors if not milvus else 0) + index + path_bytes + model_bytes + (vectors + path_bytes if chunks else 0)


# --- writing ----------------------------------------------------------------------------------------------------
def write_index(
    index: IndexDir,
    gallery: Gallery,
    model: Path,
    model_sha256: str,
    cfg: IndexConfig,
    manifest: dict,
    previous: dict | None = None,
    kept: str = "",
    needed: int | None = None,
) -> dict:
    """Build (and tune) the faiss index over the gallery, or fill a new Milvus collection, then write the directory.
    ``kept`` ends the message of a write the disk refuses (what is left as it was), ``needed`` the bytes it needs."""
    counts = {"images": len(gallery), "skipped": len(gallery.skipped)}
    manifest = {**manifest, "counts": counts}
    if cfg.backend == MILVUS:
        with disk_errors(index.path, needed, after=kept):
            return write_milvus(index, gallery, model, model_sha256, cfg, manifest, previous)
    kind = cfg.index
    if kind == "auto":
        kind = ann.choose_kind(len(gallery), gallery.student.shape[1], cfg.memory_budget_mb * 2**20)
    started = time.perf_counter()
    built, factory = ann.build(np.ascontiguousarray(gallery.student, dtype=np.float32), kind, cfg.seed)
    tuned = ann.tune(built, kind, factory, gallery.student, cfg.min_recall, cfg.recall_queries, cfg.seed)
    build = {**manifest.get("build", {}), "index_s": round(time.perf_counter() - started, 2)}
    backend = {"name": "faiss", "faiss_version": faiss.__version__}
    with disk_errors(index.path, needed, after=kept):
        return index.write(
            gallery,
            model,
            tuned,
            {
                **manifest,
                "backend": backend,
                "build": build,
                "index_requested": cfg.index,
                "min_recall": cfg.min_recall,
            },
            model_sha256,
        )


def milvus_uri(uri: str) -> str:
    """A Milvus Lite file is found from any working directory; a server's URI stays as given."""
    return uri if "://" in uri else str(Path(uri).resolve())


def collection_prefix(index_id: str) -> str:
    return f"{MILVUS_PREFIX}{index_id[:16]}_"


def check_alias_is_ours(cfg: IndexConfig, index_id: str) -> None:
    """Refuse a ``--collection`` alias that names another index's collection (before any work)."""
    from .milvus import alias_target

    if cfg.collection is None:
        return
    target = alias_target(milvus_uri(cfg.uri), cfg.collection)
    if target is not None and not target.startswith(collection_prefix(index_id)):
        raise S2SDError(
            f"Milvus alias {cfg.collection!r} at {cfg.uri} names collection {target!r}, which belongs to another "
            f"index; choose another --collection (nothing was written)"
        )


def write_milvus(
    index: IndexDir, gallery: Gallery, model: Path, model_sha256: str, cfg: IndexConfig, manifest: dict, previous
) -> dict:
    """Fill a new collection (named from the index's id), swap the index directory to it, point the alias at it,
    then drop this index's older collections: a rebuild killed before the swap leaves the previous one whole."""
    from .milvus import MilvusGallery, collections_named, drop_collections, point_alias

    kind = "flat" if cfg.index == "auto" else cfg.index.split("-")[0]
    teacher_dim = None if gallery.teacher is None else gallery.teacher.shape[1]
    uri = milvus_uri(cfg.uri)
    prefix = collection_prefix(manifest["index_id"])
    collection = f"{prefix}{uuid.uuid4().hex[:8]}"
    metadata = {**manifest["model"], "index_id": manifest["index_id"]}
    student_dim = gallery.student.shape[1]
    with MilvusGallery.create(uri, collection, student_dim, teacher_dim, metadata=metadata, index=kind) as store:
        teacher = None if gallery.teacher is None else np.asarray(gallery.teacher, dtype=np.float32)
        store.add(np.arange(len(gallery), dtype=np.int64), gallery.student, teacher, gallery.paths)
    backend = {"name": MILVUS, "uri": uri, "collection": collection, "alias": cfg.collection}
    with index.replacement() as new:
        new.write_jsonl(SKIPPED, gallery.skipped)
        new.copy_model(model, model_sha256)
        written = new.write_manifest({**manifest, "backend": backend, "index": {"kind": kind, "milvus": True}})
    if cfg.collection:
        point_alias(uri, cfg.collection, collection)
    older = [name for name in collections_named(uri, prefix) if name != collection]
    drop_collections(uri, older)
    old_backend = (previous or {}).get("backend", {})
    if old_backend.get("name") == MILVUS and not old_backend.get("collection", "").startswith(MILVUS_PREFIX):
        log.warning(
            "the previous version's collection %r at %s was left in place (written by an older s2sd, it may be "
            "shared); drop it yourself if nothing uses it",
            old_backend.get("collection"),
            old_backend.get("uri"),
        )
    return written
