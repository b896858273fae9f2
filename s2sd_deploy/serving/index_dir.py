"""The index directory of ``s2sd index``: a searchable gallery, self-contained, in one class.

Files (``manifest.json`` is written last; an index without it is incomplete and is not opened):

==================== ====================================================================================
``manifest.json``    format ``s2sd-index/2``: the index's id, the version's id, the model (run id, config hash,
                     file hash, dimensions), the backend, the index kind, factory string, search parameter and
                     measured recall@10, counts, build time, and each file's size and checksums
``model.onnx``       a copy of the model that embedded the gallery: queries must be embedded by it
``student.npy``      float32 (N, d) student vectors, the source every index is built from
``student.faiss``    the faiss index over them (faiss backend)
``teacher.npy``      float16 (N, d_t) teacher vectors for re-ranking (models exported ``--with-teacher``);
                     memory-mapped, so only the rows of a shortlist are read
``paths.jsonl``      one JSON string per line: the gallery's files (absolute, resolved), row i is id i
``skipped.jsonl``    files that did not decode (``--skip-bad-images``), with why
==================== ====================================================================================

With the Milvus backend the vectors and paths live in a Milvus collection instead, and the directory keeps the
manifest and the model. An interrupted build keeps its completed chunks in ``.build/`` and resumes from them.

Writers: one at a time. ``build``, ``add`` and ``merge`` hold :meth:`IndexDir.lock` (a lock file ``.NAME.lock``
beside the directory, which stays put while versions are swapped) for their whole run. A new version of an index
is written into a sibling folder ``.NAME.writing`` and then exchanged with the directory in one ``renameat2``
call (two renames where the filesystem cannot exchange), so an interrupted write leaves the previous complete
index, never a mix. Nothing is deleted that holds anything but the files above.

Readers: :meth:`IndexDir.open` opens the directory once and every file of the version its manifest describes
through that one directory handle, then checks them against the manifest's checksums (small files whole, large
ones by sampled blocks, see :mod:`.checksums`). The open files stay with the :class:`IndexDir`, so a version
swapped out and deleted while it is being read keeps being read whole; an open that races a swap starts again.
"""

from __future__ import annotations

import ctypes
import errno
import io
import json
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

from .. import __version__
from ..atomic_files import atomic_path, write_json_atomic
from ..disk_space import disk_errors
from ..errors import Interrupted, S2SDError
from ..locks import ExclusiveLock
from ..output_folders import foreign_entries
from . import checksums

log = logging.getLogger(__name__)

INDEX_FORMAT = "s2sd-index/2"
READABLE_FORMATS = ("s2sd-index/1", INDEX_FORMAT)  # /1: sizes only, paths as given to the build
MANIFEST, MODEL, STUDENT, FAISS, TEACHER = "manifest.json", "model.onnx", "student.npy", "student.faiss", "teacher.npy"
PATHS, SKIPPED, BUILD = "paths.jsonl", "skipped.jsonl", ".build"
OWN_NAMES = (MANIFEST, MODEL, STUDENT, FAISS, TEACHER, PATHS, SKIPPED, BUILD, ".*.tmp")  # all an index may hold
OPEN_ATTEMPTS = 60  # an open that races a swap is tried again, after a pause growing to 50 ms
BUSY = "{path} is being written by another s2sd process (pid {{pid}}); wait for it to finish, then run this again"


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

    def select(self, rows: np.ndarray) -> Gallery:
        """The gallery restricted to ``rows`` (in that order)."""
        return Gallery(
            self.student[rows],
            None if self.teacher is None else self.teacher[rows],
            [self.paths[i] for i in rows],
            self.skipped,
        )


class _Moved(Exception):
    """The version being opened was swapped out meanwhile: open the directory again."""


class IndexDir:
    """One index directory. ``IndexDir(path)`` names it (to write it); :meth:`open` pins and checks one version."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._manifest: dict | None = None
        self._files: dict[str, io.FileIO] = {}  # the opened version's files, by name
        self._records: dict[str, dict] = {}  # checksums of the files this object wrote
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"IndexDir({str(self.path)!r})"

    # --- opening one version ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, full_check: bool = False) -> IndexDir:
        """The index at ``path``, every file of its current version opened and checked (``full_check``: every byte,
        as ``s2sd index verify`` does; otherwise large files by sampled blocks)."""
        index = cls(path)
        for attempt in range(OPEN_ATTEMPTS):
            try:
                index._pin(full_check, last_try=attempt == OPEN_ATTEMPTS - 1)
                return index
            except _Moved:
                index.close()
                time.sleep(min(0.05, 0.0005 * 2**attempt))
        raise AssertionError("unreachable: the last try raises")

    def _pin(self, full_check: bool, last_try: bool) -> None:
        try:
            directory = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if not last_try and (self._sibling("writing").is_dir() or self._sibling("previous").is_dir()):
                raise _Moved from None  # between the two renames of a swap
            raise S2SDError(self._not_found()) from None
        except NotADirectoryError:
            raise S2SDError(
                f"{self.path} is a file, not an index directory (build one with `s2sd index build`)"
            ) from None
        try:
            self._pin_version(directory, full_check, last_try)
        finally:
            os.close(directory)

    def _pin_version(self, directory: int, full_check: bool, last_try: bool) -> None:
        def moved_or(error: S2SDError):
            return _Moved() if not last_try and not self._is_current(directory) else error

        try:
            manifest_file = _open_in(directory, MANIFEST)
        except FileNotFoundError:
            raise moved_or(S2SDError(self._no_manifest())) from None
        with manifest_file:
            text = manifest_file.read()
        try:
            manifest = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            invalid = S2SDError(f"{self.path / MANIFEST} is not valid JSON ({error}); rebuild the index")
            raise moved_or(invalid) from None
        self._check_format(manifest)
        damaged = []
        for name, entry in manifest.get("files", {}).items():
            try:
                self._files[name] = _open_in(directory, name)
            except FileNotFoundError:
                damaged.append(f"{name} (missing)")
                continue
            found = checksums.problem(self._files[name].fileno(), entry, full=full_check)
            if found:
                damaged.append(f"{name} ({found})")
        if damaged:
            raise moved_or(S2SDError(self._damaged(damaged)))
        self._manifest = manifest

    def _is_current(self, directory: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        pinned = os.fstat(directory)
        return (now.st_dev, now.st_ino) == (pinned.st_dev, pinned.st_ino)

    def _not_found(self) -> str:
        previous = self._sibling("previous")
        if previous.is_dir():  # killed between the two renames of a swap on a filesystem that cannot exchange
            return (
                f"index not found: {self.path}; its previous version is in {previous}: rename it back, or run any "
                f"`s2sd index` command that writes it (it restores it)"
            )
        return f"index not found: {self.path}"

    def _no_manifest(self) -> str:
        if (self.path / BUILD).is_dir():
            return (
                f"{self.path} has no {MANIFEST}: its build did not finish; run the same `s2sd index build` again "
                f"to resume it"
            )
        return f"{self.path} has no {MANIFEST}: it is not an s2sd index (build one with `s2sd index build`)"

    def _damaged(self, damaged: list[str]) -> str:
        return (
            f"index {self.path} is damaged: {', '.join(damaged)} — not the file{'s' if len(damaged) > 1 else ''} its "
            f"{MANIFEST} records; rebuild the index (or restore it from a copy)"
        )

    def _check_format(self, manifest) -> None:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found not in READABLE_FORMATS:
            raise S2SDError(f"{self.path / MANIFEST} is not an s2sd index of format {INDEX_FORMAT} (found {found!r})")

    def close(self) -> None:
        """Close the opened version's files (arrays already memory-mapped from them stay readable)."""
        for handle in self._files.values():
            handle.close()
        self._files.clear()

    def __enter__(self) -> IndexDir:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def manifest(self) -> dict:
        """The opened version's manifest (of an index named but not opened: read from its directory now)."""
        if self._manifest is None:
            path = self.path / MANIFEST
            if not path.is_file():
                raise S2SDError(self._no_manifest())
            try:
                manifest = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise S2SDError(f"{path} is not valid JSON ({error}); rebuild the index") from None
            self._check_format(manifest)
            self._manifest = manifest
        return self._manifest

    @property
    def backend(self) -> str:
        return self.manifest["backend"]["name"]

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    def model_file(self) -> Path:
        """A path to the opened version's model, valid even after a newer version replaced it (on Linux the open
        file's ``/proc/self/fd`` entry; elsewhere the directory's current ``model.onnx``)."""
        handle = self._files.get(MODEL)
        proc = Path(f"/proc/self/fd/{handle.fileno()}") if handle else None
        return proc if proc is not None and proc.exists() else self.model_path

    # --- reading the opened version ----------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        handle = self._pinned(name)
        size = os.fstat(handle.fileno()).st_size
        parts, offset = [], 0
        while offset < size:
            part = os.pread(handle.fileno(), min(size - offset, 1 << 30), offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return b"".join(parts)

    def _pinned(self, name: str) -> io.FileIO:
        if not self._files and self._manifest is None:
            raise S2SDError(f"{self!r} was not opened: use IndexDir.open({str(self.path)!r})")
        if name not in self._files:
            raise S2SDError(f"{self.path} has no {name} (its {MANIFEST} does not list it)")
        return self._files[name]

    def check_whole(self, name: str) -> None:
        """Check every byte of the opened file ``name`` against its checksum (the model, before it is loaded:
        onnxruntime reads it whole anyway, and a damaged weight would give wrong answers, not an error)."""
        entry = self.manifest.get("files", {}).get(name)
        found = entry is not None and checksums.problem(self._pinned(name).fileno(), entry, full=True)
        if found:
            raise S2SDError(self._damaged([f"{name} ({found})"]))

    def has(self, name: str) -> bool:
        return name in self._files

    def array(self, name: str, memory_mapped: bool = True) -> np.ndarray:
        """The ``.npy`` file ``name`` of the opened version, memory-mapped (read-only) or in memory."""
        handle = self._pinned(name)
        try:
            shape, fortran, dtype, offset = npy_layout(self.read_at(name))
        except ValueError as error:
            raise S2SDError(f"{self.path / name} is not a readable .npy file ({error}); rebuild the index") from None
        if int(np.prod(shape)) * dtype.itemsize + offset != os.fstat(handle.fileno()).st_size:
            raise S2SDError(f"{self.path / name}: its header does not match its size; rebuild the index")
        if not int(np.prod(shape)):
            return np.zeros(shape, dtype)
        with self._read_lock:  # np.memmap seeks the shared file object
            mapped = np.memmap(handle, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        return np.asarray(mapped) if memory_mapped else np.array(mapped)

    def read_at(self, name: str):
        fd = self._pinned(name).fileno()
        return lambda offset, length: os.pread(fd, length, offset)

    def gallery(self, teacher_in_memory: bool = True) -> Gallery:
        """Everything the faiss backend stores (vectors memory-mapped unless asked otherwise)."""
        in_memory = teacher_in_memory
        teacher = self.array(TEACHER, not in_memory) if self.has(TEACHER) else None
        return Gallery(self.array(STUDENT, not in_memory), teacher, self.paths(), self.skipped())

    def paths(self) -> list[str]:
        return self._jsonl(PATHS)

    def skipped(self) -> list:
        return self._jsonl(SKIPPED) if self.has(SKIPPED) else []

    def _jsonl(self, name: str) -> list:
        try:
            return [json.loads(line) for line in self.read_bytes(name).decode("utf-8").splitlines()]
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise S2SDError(f"{self.path / name} is not valid JSON lines ({error}); rebuild the index") from None

    def faiss_index(self) -> faiss.Index:
        from .ann import set_search_parameter

        fd, offset = self._pinned(FAISS).fileno(), 0

        def read(length: int) -> bytes:
            nonlocal offset
            block = os.pread(fd, length, offset)
            offset += len(block)
            return block

        try:
            index = faiss.read_index(faiss.PyCallbackIOReader(read))
        except RuntimeError as error:
            raise S2SDError(
                f"{self.path / FAISS} is not a readable faiss index ({str(error).splitlines()[0]})"
            ) from None
        set_search_parameter(index, self.manifest["index"]["search_parameter"])
        return index

    # --- one writer --------------------------------------------------------------------------------------------
    def lock(self) -> ExclusiveLock:
        """Hold this index for one writer (released by ``with``, or when the process ends however it ends), and
        put back a previous version that a writer killed mid-swap left beside it."""
        lock_file = self._sibling("lock")
        with disk_errors(lock_file, after="; the index's lock file is written beside it"):
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            held = ExclusiveLock(lock_file).acquire(BUSY.format(path=self.path))
        previous, real = self._sibling("previous"), self._real_path()
        if not real.exists() and (previous / MANIFEST).is_file():
            os.rename(previous, real)
            log.warning("restored %s from %s, left by a write killed while it swapped versions", real, previous)
        return held

    # --- writing a version -------------------------------------------------------------------------------------
    def write(self, gallery: Gallery, model: Path, tuned, manifest: dict, model_sha256: str | None = None) -> dict:
        """Write a complete faiss-backend index (see :meth:`replacement`) and return the manifest; with
        ``model_sha256``, a model that is not that file (it changed since it embedded the gallery) is refused."""
        with self.replacement() as new:
            new.copy_model(model, model_sha256)
            new.save_npy(STUDENT, np.asarray(gallery.student, dtype=np.float32))
            if gallery.teacher is not None:
                new.save_npy(TEACHER, np.asarray(gallery.teacher, dtype=np.float16))
            new.write_file(FAISS, lambda out: faiss.write_index(tuned.index, faiss.PyCallbackIOWriter(out.write)))
            new.write_jsonl(PATHS, gallery.paths)
            new.write_jsonl(SKIPPED, gallery.skipped)
            return new.write_manifest({**manifest, "index": tuned.describe()})

    @contextmanager
    def replacement(self):
        """An empty sibling :class:`IndexDir` to write the new version into (the manifest last). When the block
        ends without an error it replaces this directory whole, ``.build/`` chunks included; when it raises, this
        directory is left as it was."""
        new = IndexDir(self._sibling("writing"))
        remove_own_folder(new.path)  # left by an interrupted write
        new.path.mkdir(parents=True)
        try:
            yield new
            self._swap_in(new.path)
        except BaseException:
            remove_own_folder(new.path)
            raise
        self.close()  # this object's opened version, if any, is no longer the index's
        self._manifest = None

    def _swap_in(self, new: Path) -> None:
        target, previous = self._real_path(), self._sibling("previous")
        remove_own_folder(previous)
        if target.is_dir():
            foreign = foreign_entries(target, OWN_NAMES)
            if foreign:
                raise S2SDError(
                    f"{', '.join(foreign[:5])} appeared in {self.path} while it was written, and s2sd did not write "
                    f"{'it' if len(foreign) == 1 else 'them'}: nothing was replaced; move "
                    f"{'it' if len(foreign) == 1 else 'them'} out and run the command again"
                )
        with deferred_interrupts() as interrupts:
            if not target.exists():
                os.rename(new, target)
            elif exchange(new, target):
                os.rename(new, previous)  # the old version, now under the new one's name
            else:
                os.rename(target, previous)
                try:
                    os.rename(new, target)
                except BaseException:
                    os.rename(previous, target)
                    raise
        remove_own_folder(previous)  # readers that opened it keep their open files
        if interrupts:  # Ctrl-C during the swap: it completed first
            raise Interrupted(f"interrupted: {self.path} was replaced by its new version, complete, before it stopped")

    def _real_path(self) -> Path:
        return self.path.resolve()  # a symlink's target is what gets replaced

    def _sibling(self, role: str) -> Path:
        real = self._real_path()
        return real.with_name(f".{real.name}.{role}")

    def write_file(self, name: str, write) -> None:
        """Write ``name`` atomically through a :class:`~.checksums.HashingWriter`; its record goes in the manifest."""
        with atomic_path(self.path / name) as tmp:
            self._records[name] = checksums.write_checked(tmp, write)

    def save_npy(self, name: str, array: np.ndarray) -> None:
        self.write_file(name, lambda out: np.save(out, np.ascontiguousarray(array), allow_pickle=False))

    def write_jsonl(self, name: str, rows: list) -> None:
        data = "".join(json.dumps(row) + "\n" for row in rows).encode()  # ASCII: odd file names survive
        self.write_file(name, lambda out: out.write(data))

    def copy_model(self, model: Path, expected_sha256: str | None = None) -> None:
        """Copy the model into the index, hashing it on the way; a model changed since it embedded the gallery is
        refused."""

        def copy(out):
            with open(model, "rb") as source:
                shutil.copyfileobj(source, out, 8 * 2**20)

        self.write_file(MODEL, copy)
        if expected_sha256 and self._records[MODEL]["sha256"] != expected_sha256:
            raise S2SDError(f"{model} changed while the index was built (its SHA-256 differs); build the index again")

    def write_manifest(self, manifest: dict) -> dict:
        """Write ``manifest.json`` (last), with each file's record; files this object did not write are hashed."""
        files = {}
        for path in sorted(self.path.iterdir()):
            if path.is_file() and path.name != MANIFEST:
                files[path.name] = self._records.get(path.name) or _record_of(path)
        manifest = {
            "format": INDEX_FORMAT,
            "package_version": __version__,
            "index_id": manifest.get("index_id") or uuid.uuid4().hex,
            **manifest,
            "version_id": uuid.uuid4().hex,
            "files": files,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json_atomic(self.path / MANIFEST, manifest)
        self._manifest = manifest
        return manifest

    # --- an interrupted build: completed chunks ---------------------------------------------------------------
    @property
    def build_folder(self) -> Path:
        return self.path / BUILD

    def start_build(self, plan: dict) -> None:
        """Keep the completed chunks of an interrupted build of the same plan; otherwise start afresh."""
        plan_file = self.build_folder / "plan.json"
        try:
            if json.loads(plan_file.read_text()) == plan:
                return
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            log.warning("%s is damaged; starting the build afresh", plan_file)
        if self.build_folder.is_dir():
            remove_own_folder(self.build_folder, names=("plan.json", "chunk-*.npz", "chunk-*.json", ".*.tmp"))
        write_json_atomic(plan_file, plan)

    def chunk_file(self, number: int) -> Path:
        return self.build_folder / f"chunk-{number:06d}.npz"

    def save_chunk(self, number: int, write) -> None:
        """Write chunk ``number`` and then its record (``chunk-N.json``): a chunk without a record is not trusted."""
        path = self.chunk_file(number)
        with atomic_path(path) as tmp:
            entry = checksums.write_checked(tmp, write)
        write_json_atomic(path.with_suffix(".json"), entry)

    def read_chunk(self, number: int) -> bytes | None:
        """The bytes of completed chunk ``number``, or ``None`` when it is missing; a chunk that does not match its
        record is deleted (with a notice) and ``None`` returned, so it is embedded again."""
        path = self.chunk_file(number)
        record_file = path.with_suffix(".json")
        if not path.is_file() or not record_file.is_file():  # killed before its record was written
            path.unlink(missing_ok=True)
            return None
        try:
            entry = json.loads(record_file.read_text())
            data = path.read_bytes()
            intact = len(data) == entry["bytes"] and checksums.sha256_of(data) == entry["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            log.warning("chunk %d of the interrupted build (%s) is damaged: embedding its images again", number, path)
            path.unlink(missing_ok=True)
            record_file.unlink(missing_ok=True)
            return None
        return data


def _open_in(directory: int, name: str) -> io.FileIO:
    if "/" in name or name in ("", ".", ".."):
        raise FileNotFoundError(name)  # a manifest naming files outside its directory is not ours
    return io.FileIO(os.open(name, os.O_RDONLY, dir_fd=directory), "rb")


def _record_of(path: Path) -> dict:
    with open(path, "rb") as handle:
        fd = handle.fileno()
        size = os.fstat(fd).st_size
        return checksums.record(size, checksums.full_digest(fd, size), lambda o, n: os.pread(fd, n, o))


def npy_layout(read_at) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of an ``.npy`` file from its first bytes."""
    head = io.BytesIO(read_at(0, 65536))
    version = np.lib.format.read_magic(head)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = readers[version](head)
    if dtype.hasobject:
        raise ValueError("it holds Python objects")
    return shape, fortran, dtype, head.tell()


def remove_own_folder(path: Path, names=OWN_NAMES) -> None:
    """Delete ``path`` if it is a folder that holds only files an index writes (``names``); refuse anything else."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir() or foreign_entries(path, names):
        raise S2SDError(f"{path} is in the way and was not written by s2sd: move it elsewhere, then run this again")
    shutil.rmtree(path)


@contextmanager
def deferred_interrupts():
    """Ctrl-C arriving inside the block is held back; the block gets the list of those received, to act on when it
    is done (in the main thread; other threads never receive it)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


def exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the system
    or the filesystem cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:  # AT_FDCWD, RENAME_EXCHANGE
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


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
    with open(path, "rb") as handle:
        return checksums.full_digest(handle.fileno(), os.fstat(handle.fileno()).st_size)
