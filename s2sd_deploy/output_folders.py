"""Output folders: a command writes only into a folder that is new, empty, or its own.

The rules every command that writes a folder follows (``s2sd index build/merge``, ``s2sd export``,
``s2sd bench-latency``, ...), checked before any work starts:

- a path that does not exist, or an empty folder, is taken;
- a folder the command wrote before (it holds one of the command's ``owner_files``, e.g. an index's
  ``manifest.json``) is replaced only with ``--force``, unless it is ``resumable`` (an interrupted build of the
  same command, which the command continues);
- any other folder is the user's: refused, whatever ``--force`` says; nothing in it is touched;
- an output inside or equal to one of the command's inputs (or an input inside the output) is refused: a
  replacement would delete the input.

So a command can never delete what it did not write.
"""

from __future__ import annotations

from collections.abc import Iterable
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
) -> Path:
    """Check that ``path`` may be written as ``what`` (e.g. "an s2sd index"); return it. Raises :class:`S2SDError`
    naming the folder and the fix otherwise."""
    path = Path(path)
    check_output_folder(path, option)
    check_not_overlapping(path, option, inputs)
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if any((path / name).exists() for name in resumable):
        return path
    if not any((path / name).exists() for name in owner_files):
        raise S2SDError(
            f"{option} {path} is a folder that is not {what} and is not empty; nothing was written: "
            f"choose a new or empty folder (it is never deleted or overwritten)"
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
