"""The index directory of ``s2sd index``: a searchable gallery, self-contained, in one class.

Files (``manifest.json`` is written last; an index without it is incomplete and is not opened):

==================== ====================================================================================
``manifest.json``    format ``s2sd-index/1``: the model (run id, config hash, file hash, dimensions), the
                     backend, the index kind, factory string, search parameter and measured recall@10,
                     counts, build time, and each file's size
``model.onnx``       a copy of the model that embedded the gallery: queries must be embedded by it
``student.npy``      float32 (N, d) student vectors, the source every index is built from
``student.faiss``    the faiss index over them (faiss backend)
``teacher.npy``      float16 (N, d_t) teacher vectors for re-ranking (models exported ``--with-teacher``);
                     memory-mapped, so only the rows of a shortlist are read
``paths.jsonl``      one JSON string per line: the gallery's files, row i is id i
``skipped.jsonl``    files that did not decode (``--skip-bad-images``), with why
==================== ====================================================================================

With the Milvus backend the vectors and paths live in the Milvus collection instead, and the directory keeps
the manifest and the model. An interrupted build keeps its completed chunks in ``.build/`` and resumes from them.

A new version of an index (a build, ``add``, a rebuild) is written into a sibling folder ``.NAME.writing`` that
then replaces the directory by two renames, so an interrupted write leaves the previous complete index (or the
chunks of the build) as they were, never a mix of old and new files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np

from .. import __version__
from ..atomic_files import atomic_path, read_json, write_json_atomic, write_text_atomic
from ..errors import S2SDError

INDEX_FORMAT = "s2sd-index/1"
MANIFEST, MODEL, STUDENT, FAISS, TEACHER = "manifest.json", "model.onnx", "student.npy", "student.faiss", "teacher.npy"
PATHS, SKIPPED, BUILD = "paths.jsonl", "skipped.jsonl", ".build"


@dataclass
class Gallery:
    """The embedded gallery: what an index is built from and what merge and add combine."""

    student: np.ndarray  # (N, d) float32
    teacher: np.ndarray | None  # (N, d_t) float16 or float32
    paths: list[str]
    skipped: list[list[str]]  # [path, why]

    def __len__(self) -> int:
        return len(self.paths)

    @staticmethod
    def concatenate(parts: list[Gallery]) -> Gallery:
        teachers = [p.teacher for p in parts]
        if any(t is None for t in teachers) and not all(t is None for t in teachers):
            raise S2SDError(
                "some of the galleries have teacher vectors and some do not: they were built with different models"
            )
        return Gallery(
            np.concatenate([p.student for p in parts]),
            None if teachers[0] is None else np.concatenate(teachers).astype(np.float16),
            [path for p in parts for path in p.paths],
            [s for p in parts for s in p.skipped],
        )


class IndexDir:
    """One index directory. ``IndexDir(path)`` names it; :meth:`open` checks it is complete."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"IndexDir({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | Path) -> IndexDir:
        index = cls(path)
        if not index.path.is_dir():
            previous = index._sibling("previous")
            if previous.is_dir():  # killed between the two renames of a replacement
                raise S2SDError(f"index not found: {index.path}; its previous version is in {previous}: rename it back")
            raise S2SDError(f"index not found: {index.path}")
        if not (index.path / MANIFEST).is_file():
            unfinished = (index.path / BUILD).is_dir()
            raise S2SDError(
                f"{index.path} has no {MANIFEST}: "
                + (
                    "its build did not finish; run the same `s2sd index build` again to resume it"
                    if unfinished
                    else "it is not an s2sd index (build one with `s2sd index build`)"
                )
            )
        index.check_files()
        return index

    @cached_property
    def manifest(self) -> dict:
        manifest = read_json(self.path / MANIFEST)
        if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise S2SDError(f"{self.path / MANIFEST} is not an s2sd index of format {INDEX_FORMAT} (found {found!r})")
        return manifest

    def check_files(self) -> None:
        """The files have the sizes the manifest records: a directory whose files were changed or copied only in
        part is refused instead of searched."""
        for name, size in self.manifest.get("files", {}).items():
            path = self.path / name
            if not path.is_file() or path.stat().st_size != size:
                raise S2SDError(f"{path} is missing or not the file {MANIFEST} records; rebuild the index")

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def backend(self) -> str:
        return self.manifest["backend"]["name"]

    # --- reading ---------------------------------------------------------------------------------------
    def gallery(self, teacher_in_memory: bool = True) -> Gallery:
        """Everything the faiss backend stores (vectors memory-mapped unless asked otherwise)."""
        mode = None if teacher_in_memory else "r"
        teacher = np.load(self.path / TEACHER, mmap_mode=mode) if (self.path / TEACHER).is_file() else None
        return Gallery(
            np.load(self.path / STUDENT, mmap_mode=mode), teacher, self.paths(), read_jsonl(self.path / SKIPPED)
        )

    def paths(self) -> list[str]:
        return [json.loads(line) for line in (self.path / PATHS).read_text(encoding="utf-8").splitlines()]

    def faiss_index(self) -> faiss.Index:
        from .ann import set_search_parameter

        index = faiss.read_index(str(self.path / FAISS))
        set_search_parameter(index, self.manifest["index"]["search_parameter"])
        return index

    # --- writing ---------------------------------------------------------------------------------------
    def write(self, gallery: Gallery, model: Path, tuned, manifest: dict) -> dict:
        """Write a complete faiss-backend index (see :meth:`replacement`) and return the manifest."""
        with self.replacement() as new:
            new.copy_model(model)
            save_npy(new.path / STUDENT, np.asarray(gallery.student, dtype=np.float32))
            if gallery.teacher is not None:
                save_npy(new.path / TEACHER, np.asarray(gallery.teacher, dtype=np.float16))
            faiss.write_index(tuned.index, str(new.path / FAISS))
            write_jsonl(new.path / PATHS, gallery.paths)
            write_jsonl(new.path / SKIPPED, gallery.skipped)
            return new.write_manifest({**manifest, "index": tuned.describe()})

    @contextmanager
    def replacement(self):
        """An empty sibling :class:`IndexDir` to write the new version into (the manifest last). When the block
        ends without an error it replaces this directory whole, ``.build/`` chunks included; when it raises, this
        directory is left as it was."""
        new = IndexDir(self._sibling("writing"))
        shutil.rmtree(new.path, ignore_errors=True)  # left by an interrupted write
        new.path.mkdir(parents=True)
        try:
            yield new
        except BaseException:
            shutil.rmtree(new.path, ignore_errors=True)
            raise
        previous = self._sibling("previous")
        shutil.rmtree(previous, ignore_errors=True)
        if self.path.exists():
            os.rename(self.path.resolve(), previous)
        os.rename(new.path, self.path.resolve())
        shutil.rmtree(previous, ignore_errors=True)
        self.__dict__.pop("manifest", None)

    def _sibling(self, role: str) -> Path:
        real = self.path.resolve()  # beside a symlink's target, which is what gets replaced
        return real.with_name(f".{real.name}.{role}")

    def copy_model(self, model: Path) -> None:
        with atomic_path(self.model_path) as tmp:
            shutil.copyfile(model, tmp)

    def write_manifest(self, manifest: dict) -> dict:
        files = {p.name: p.stat().st_size for p in sorted(self.path.iterdir()) if p.is_file() and p.name != MANIFEST}
        manifest = {
            "format": INDEX_FORMAT,
            "package_version": __version__,
            **manifest,
            "files": files,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.path / MANIFEST, manifest)
        self.__dict__.pop("manifest", None)
        return manifest

    # --- an interrupted build: completed chunks -------------------------------------------------------
    @property
    def build_folder(self) -> Path:
        return self.path / BUILD

    def start_build(self, plan: dict) -> None:
        """Keep the completed chunks of an interrupted build of the same plan; otherwise start afresh."""
        plan_file = self.build_folder / "plan.json"
        if plan_file.is_file() and read_json(plan_file) == plan:
            return
        shutil.rmtree(self.build_folder, ignore_errors=True)
        write_json_atomic(plan_file, plan)

    def chunk_file(self, number: int) -> Path:
        return self.build_folder / f"chunk-{number:06d}.npz"


def model_description(embedder, sha256: str) -> dict:
    """What the manifest records of the model (``sha256``: its file's :func:`file_sha256`): a query embedded by
    another model would be meaningless."""
    meta = embedder.metadata
    return {
        "file_sha256": sha256,
        "run_id": meta.get("run_id"),
        "config_hash": meta.get("config_hash"),
        "embedding_dim": embedder.dim,
        "teacher_dim": embedder.teacher_dim,
        "checkpoint": meta.get("checkpoint"),
        "dataset": meta.get("dataset"),
    }


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def write_jsonl(path: Path, rows: list) -> None:
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))  # ASCII: odd file names survive


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
