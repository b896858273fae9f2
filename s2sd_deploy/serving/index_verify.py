"""``s2sd index verify``: every byte of an index against its manifest's checksums, and its files against each other."""

from __future__ import annotations

from pathlib import Path

from ..disk_space import human_bytes
from .index_dir import IndexDir
from .search import Searcher


def verify_index(path: str | Path) -> str:
    """Check the index at ``path`` whole; return the line that says what was checked. A damaged index raises
    :class:`~s2sd_deploy.errors.S2SDError` naming every damaged file."""
    index = IndexDir.open(path, full_check=True)
    with Searcher(index) as searcher:  # reads every file: vectors, faiss index, paths (or the Milvus collection)
        files = index.manifest.get("files", {})
        checked = [entry for entry in files.values() if isinstance(entry, dict) and "sha256" in entry]
        size = sum(entry if isinstance(entry, int) else entry["bytes"] for entry in files.values())
        how = (
            "every byte matches its checksum"
            if len(checked) == len(files)
            else f"sizes only for {len(files) - len(checked)} (written before indexes recorded checksums)"
        )
        where = "" if index.backend == "faiss" else "; its Milvus collection holds them all"
        return f"{path}: {len(files)} files ({human_bytes(size)}), {how}; {searcher.size} images{where}"
