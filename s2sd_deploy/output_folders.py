"""Output folders: a command writes only into a folder that is new, empty, or its own.

The rules every command that writes a folder follows (``s2sd index build/merge``, ``s2sd export``,
``s2sd bench-latency``, ...), checked before any work starts:

- a path that does not exist, or an empty folder, is taken;
- a folder the command wrote before (it holds one of the command's ``owner_files``, e.g. an index's
  ``manifest.json``) is replaced only with ``--force``, unless it is ``resumable`` (an interrupted build of the
  same command, which the command continues);
- any other folder is the user's: refused, whatever ``--force`` says; nothing in it is touched;
- an output inside or equal to one of the command's inputs (or an input inside the output) is refused: a
  replacement would delete the input;
- a command that replaces its folder whole (``replaced_whole``: an index directory is swapped in by renames) lists
  what its folder may hold (``own_names``, shell patterns): a folder of its own that also holds anything else is
  refused naming it, and so are the current folder and the folders above it (renaming them would pull the
  folder out from under the shell that runs the command).

So a command can never delete what it did not write. Files follow the same rule (:func:`claim_output_file`):
a file a command wrote is recognised by what is inside it (a format key), so only those are replaced. A command
that replaces a whole folder (``s2sd export``) writes the new version into a staging folder beside it and swaps
it in with :func:`swap_in`, so an interrupted write leaves the previous version, complete, or nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path

from .atomic_files import check_output_file, check_output_folder
from .errors import S2SDError


def claim_output_folder(
    path: str | Path,
    option: str,
    *,
    what: str,
    owner_files: Iterable[str],
    inputs: Iterable[str | Path] = (),
    force: bool = False,
    resumable: Iterable[str] = (),
    force_flag: str = "--force",
    own_names: Iterable[str] | None = None,
    replaced_whole: bool = False,
) -> Path:
    """Check that ``path`` may be written as ``what`` (e.g. "an s2sd index"); return it. Raises :class:`S2SDError`
    naming the folder and the fix otherwise. ``own_names`` (shell patterns) are all a folder of the command may
    hold; ``replaced_whole`` marks a command that replaces the folder whole (see the module docstring)."""
    path = Path(path)
    check_output_folder(path, option)
    check_not_overlapping(path, option, inputs)
    if replaced_whole:
        check_not_above_the_current_folder(path, option)
    if not path.is_dir() or not any(path.iterdir()):
        return path
    ours = any((path / name).exists() for name in owner_files)
    resuming = any((path / name).exists() for name in resumable)
    if not ours and not resuming:
        raise S2SDError(
            f"{option} {path} is a folder that is not {what} and is not empty; nothing was written: "
            f"choose a new or empty folder (it is never deleted or overwritten)"
        )
    if own_names is not None:
        check_only_own_files(path, option, what, own_names)
    if resuming:
        return path
    if not force:
        raise S2SDError(f"{option} {path} already holds {what}; pass {force_flag} to replace it")
    return path


def claim_output_file(
    path: str | Path,
    option: str,
    *,
    what: str,
    is_ours: Callable[[Path], bool],
    force: bool = False,
    force_flag: str = "--force",
) -> Path:
    """The same rule for a file: a new (or empty) file is taken; one the command wrote (``is_ours``) is replaced
    only with ``--force``; any other file is the user's and is refused, whatever ``--force`` says."""
    path = check_output_file(path, option)
    if not path.exists() or path.stat().st_size == 0:
        return path
    if not is_ours(path):
        raise S2SDError(
            f"{option} {path} exists and is not {what}; nothing was written: choose another file name (it is never "
            f"overwritten)"
        )
    if not force:
        raise S2SDError(f"{option} {path} already holds {what}; pass {force_flag} to replace it")
    return path


def check_not_overlapping(path: Path, option: str, inputs: Iterable[str | Path]) -> None:
    """Refuse an output equal to, inside, or containing one of the inputs."""
    out = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if out == source or source in out.parents or out in source.parents:
            relation = "is" if out == source else ("is inside" if source in out.parents else "contains")
            raise S2SDError(f"{option} {path} {relation} the input {given}: choose an output folder outside it")


def foreign_entries(path: Path, own_names: Iterable[str]) -> list[str]:
    """The names in the folder ``path`` that match none of the patterns ``own_names``, sorted."""
    patterns = list(own_names)
    return sorted(entry.name for entry in path.iterdir() if not any(fnmatch(entry.name, p) for p in patterns))


def check_only_own_files(path: Path, option: str, what: str, own_names: Iterable[str]) -> None:
    """Refuse a folder of the command's that also holds something it did not write (replacing it would delete it)."""
    foreign = foreign_entries(path, own_names)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise S2SDError(
            f"{option} {path} holds {what} and also {shown}, which s2sd did not write; nothing was written: "
            f"move {'it' if len(foreign) == 1 else 'them'} out of the folder first (it is never deleted)"
        )


def check_not_above_the_current_folder(path: Path, option: str) -> None:
    """Refuse the current folder, the folders above it, and the filesystem's root as a folder replaced whole."""
    out, here = path.resolve(), Path(os.getcwd()).resolve()
    if out == out.parent:
        raise S2SDError(f"{option} {path} is the root of the filesystem: give a folder under it, e.g. {out / 'index'}")
    if out == here or out in here.parents:
        relation = "is the current folder" if out == here else "contains the current folder"
        raise S2SDError(
            f"{option} {path} {relation}, which the command would replace whole: give a new folder inside it, "
            f"e.g. {option} {Path(path) / 'index'}"
        )


# --- writing a folder's new version beside it, then swapping it in ---------------------------------------------
STAGING, PREVIOUS, FAILED = "staging", "previous", "failed"


def sibling(target: Path, kind: str) -> Path:
    """``.NAME.KIND`` beside ``target``: where its next version is written (``staging-PID``), where the previous
    one waits during a two-rename swap (``previous``), where a failed attempt is kept (``failed``)."""
    return target.parent / f".{target.name}.{kind}"


def staging_folder(target: str | Path) -> Path:
    """A new, empty folder beside ``target`` to write its next version into (on the same file system, so it can be
    renamed into place). Leftovers of interrupted earlier writes of ``target`` are cleared first: staging folders
    of processes that no longer run, and a previous version parked by a swap that was killed halfway, which is
    put back."""
    target = Path(target).resolve()
    recover_folder(target)
    for leftover in target.parent.glob(f".{glob_escape(target.name)}.{STAGING}-*"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
    staging = sibling(target, f"{STAGING}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def swap_in(staging: Path, target: str | Path) -> None:
    """Make the complete folder ``staging`` the new ``target`` in one step: a rename onto a missing or empty
    ``target``, else an atomic exchange (``renameat2(RENAME_EXCHANGE)``) after which the old version is deleted.
    Where the file system cannot exchange, the old version is parked as ``.NAME.previous`` for the moment between
    two renames (:func:`recover_folder` puts it back if the process dies there)."""
    target = Path(target).resolve()
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)
        return
    previous = sibling(target, PREVIOUS)
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous)


def recover_folder(target: str | Path) -> None:
    """Put back a previous version that a swap killed between its two renames left parked."""
    target = Path(target).resolve()
    previous = sibling(target, PREVIOUS)
    if previous.is_dir() and not target.exists():
        os.replace(previous, target)


def keep_failed(staging: Path, target: str | Path) -> Path:
    """Keep a failed attempt for inspection as ``.NAME.failed`` beside ``target`` (replacing an older one)."""
    failed = sibling(Path(target).resolve(), FAILED)
    shutil.rmtree(failed, ignore_errors=True)
    os.replace(staging, failed)
    return failed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where the platform or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
