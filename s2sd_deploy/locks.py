"""One writer at a time: an exclusive lock on a lock file, held by a process until it releases it or dies.

``s2sd train`` locks its run directory and ``s2sd index build/add/merge`` lock their index directory with the
same :class:`ExclusiveLock`: a second writer gets one line naming the holder's pid instead of silently
overwriting the first one's work. The lock is ``fcntl.flock`` on an open file, so the kernel releases it when
the holding process ends, even when it is killed; a stale lock file left by a killed process locks nothing.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import S2SDError


class ExclusiveLock:
    """An exclusive, non-blocking lock on the file ``path`` (created when missing), which records the holder's pid.

    >>> lock = ExclusiveLock("runs/x/.lock").acquire("runs/x is in use by pid {pid}")  # doctest: +SKIP
    >>> lock.release()                                                                 # doctest: +SKIP
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = None

    def __repr__(self) -> str:
        return f"ExclusiveLock({str(self.path)!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self, busy: str) -> ExclusiveLock:
        """Take the lock, or raise :class:`S2SDError` with ``busy`` (``{pid}`` is replaced by the holder's pid)."""
        while True:
            handle = open(self.path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "unknown"
                handle.close()
                raise S2SDError(busy.format(pid=owner)) from None
            if self._is_current(handle):
                break
            handle.close()  # a releasing holder removed the file after we opened it: lock the new one
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return self

    def _is_current(self, handle) -> bool:
        try:
            on_disk = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(handle.fileno())
        return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self, remove: bool = False) -> None:
        """Give the lock back; with ``remove``, also delete the lock file (safely: :meth:`acquire` re-checks it)."""
        if self._handle is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)  # while still held, so no one locks a file that is going away
        self._handle.close()
        self._handle = None

    def __enter__(self) -> ExclusiveLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release(remove=True)
