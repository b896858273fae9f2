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

So a command can never delete what it did not write.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path

from .atomic_files import check_output_folder
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
