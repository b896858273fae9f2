"""Files written atomically: to a temporary name beside the target, renamed over it only when complete.

A run killed mid-write therefore never leaves a half-written file, only the previous version (or none) and a
``.NAME.*.tmp`` file, which :func:`remove_temporary_files` clears. Files get the permissions a plain
``open()`` would give them (0666 less the umask), so a server running as another user can read them.
Output paths are checked before the work that fills them starts; a full disk or a read-only target met while
writing is an :class:`OSError` that names the file (``cli.main`` prints it as one line).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import S2SDError

_UMASK = os.umask(0)  # read once: the only way to read it is to set it
os.umask(_UMASK)
TEMPORARY_PATTERN = ".*.tmp"
FILE_MODE = 0o666 & ~_UMASK  # what a plain open() gives a new file
# A full disk or quota, or a target that cannot be written: the user's to fix, named in one line.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success. The file gets
    :data:`FILE_MODE` whatever wrote it (some writers, e.g. safetensors, replace the temporary file with one of
    mode 0600), and an OSError of a full disk or read-only target names ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise naming(error, path) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600 whatever the umask
        os.replace(tmp, path)
    except OSError as error:
        raise naming(error, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def naming(error: OSError, path: str | Path) -> OSError:
    """``error`` with ``path`` as its file name when it has none (a failed write() names no file)."""
    if error.filename or error.errno not in STORAGE_ERRNOS:
        return error
    return type(error)(error.errno, error.strerror or os.strerror(error.errno), str(path))


def storage_message(error: OSError) -> str | None:
    """One line for a full disk, a quota or a read-only target (``None`` for other errors): the path, what went
    wrong, and the free space where it applies."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    path = error.filename or "the output"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = free_bytes(Path(path)) if error.filename else None
        left = f" ({free / 2**20:.1f} MiB free there)" if free is not None else ""
        return f"cannot write {path}: {error.strerror}{left}; free some space or choose another output location"
    if error.errno == errno.EROFS:
        return f"cannot write {path}: {error.strerror}; choose an output location you can write to"
    return f"{path}: {error.strerror}; check its permissions, or choose another location"


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds ``path`` (or would hold it), for an unprivileged user."""
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


def check_free_space(path: str | Path, needed: int, option: str, what: str) -> None:
    """Refuse, before the work, an output that cannot fit: ``needed`` bytes for ``what`` under ``path``."""
    free = free_bytes(Path(path))
    if free is not None and free < needed:
        raise S2SDError(
            f"{option} {path}: {what} needs about {needed / 2**20:.1f} MiB but {free / 2**20:.1f} MiB is free there; "
            f"free some space or choose another location"
        )


def interruption_point(name: str) -> None:
    """Where tests interrupt a command: with ``S2SD_TEST_INTERRUPT=name:SIGNAL`` (e.g. ``export-verify:SIGKILL``)
    the process sends itself that signal here, so a kill lands at a known moment of a write."""
    wanted = os.environ.get("S2SD_TEST_INTERRUPT", "")
    if wanted.partition(":")[0] == name:
        os.kill(os.getpid(), getattr(signal, wanted.partition(":")[2] or "SIGKILL"))


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file this package wrote; a missing or corrupt file is an S2SDError naming it."""
    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise S2SDError(f"{path} is not valid JSON: {error}") from None


def remove_temporary_files(folder: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folder`` (``.NAME.*.tmp``); returns what was removed."""
    leftovers = sorted(Path(folder).glob(TEMPORARY_PATTERN)) if Path(folder).is_dir() else []
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output file that could not be written: a folder, or under a file."""
    path = Path(path)
    if path.is_dir():
        raise S2SDError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out'}")
    _check_writable_folder(path.parent, option, path)
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise S2SDError(f"{option} {path} is a file; give a folder")
    _check_writable_folder(path, option, path)
    return path


def _check_writable_folder(folder: Path, option: str, target: Path) -> None:
    existing = next(p for p in [folder, *folder.parents] if p.exists())  # the folder, or where it would be created
    if not existing.is_dir():
        raise S2SDError(f"{option} {target}: {existing} is a file, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise S2SDError(f"{option} {target}: {existing} is not writable")
