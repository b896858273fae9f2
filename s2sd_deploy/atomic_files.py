"""Files written atomically: to a temporary name beside the target, renamed over it only when complete.

A run killed mid-write therefore never leaves a half-written file, only the previous version (or none) and a
``.NAME.*.tmp`` file, which :func:`remove_temporary_files` clears. Files get the permissions a plain
``open()`` would give them (0666 less the umask), so a server running as another user can read them.
Output paths are checked before the work that fills them starts.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import S2SDError

_UMASK = os.umask(0)  # read once: the only way to read it is to set it
os.umask(_UMASK)
TEMPORARY_PATTERN = ".*.tmp"


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600 whatever the umask
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
