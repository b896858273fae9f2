"""Writing to a disk that is full or read-only: checked before the work, and reported in one line if it happens.

:func:`check_free_space` compares what a command is about to write (estimated from what it knows before it starts)
with the free space of the target's disk; :func:`disk_errors` turns the operating system's refusals during a
write (no space, over quota, read-only filesystem, permission denied) into an :class:`S2SDError` naming the path.
"""

from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from .errors import S2SDError

REASONS = {
    errno.ENOSPC: "no space left on its disk",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "its filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def existing_folder(path: str | Path) -> Path:
    """``path`` itself, or the nearest folder above it that exists (where it would be created)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.is_dir())


def check_free_space(target: str | Path, needed: int, option: str) -> None:
    """Refuse, before writing, an estimated ``needed`` bytes that the disk holding ``target`` has no room for."""
    folder = existing_folder(target)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise S2SDError(
            f"{option} {target} needs about {human_bytes(needed)} on the disk of {folder}, which has "
            f"{human_bytes(free)} free; nothing was written: free some space or choose another {option}"
        )


@contextmanager
def disk_errors(target: str | Path, needed: int | None = None, after: str = ""):
    """Turn OSError no-space / quota / read-only / permission failures inside the block into one-line errors naming
    the file (or ``target``) and, when known, the space the write needed; ``after`` says what was kept."""
    try:
        yield
    except OSError as error:
        if error.errno not in REASONS:
            raise
        where = error.filename or target
        size = f" (the write needs about {human_bytes(needed)})" if needed and error.errno == errno.ENOSPC else ""
        raise S2SDError(f"cannot write {where}: {REASONS[error.errno]}{size}{after}") from None
