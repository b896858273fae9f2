"""Checksums of the files an index writes, computed on the bytes as they are written, and checked when read.

Each file's record (in the index's ``manifest.json``, or beside a resume chunk) holds its size, the SHA-256 of its
whole content, and, for files above :data:`SAMPLED_FROM_BYTES`, the digests of :data:`SAMPLES` blocks of
:data:`SAMPLE_BLOCK` bytes at fixed offsets spread from the first byte to the last. A reader checks a file of
at most :data:`FULL_CHECK_BYTES` whole (SHA-256 runs at about 1.2 GB/s here, so that is under 15 ms) and a larger
one by its sampled blocks (1 MiB read whatever its size); ``s2sd index verify`` checks every byte.

The SHA-256 is computed by :class:`HashingWriter` while the bytes are written, so a large file is never read back
whole; its sampled blocks are read back right after the write (1 MiB, from the page cache).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

FULL_CHECK_BYTES = 16 * 2**20
SAMPLE_BLOCK = 64 * 2**10
SAMPLES = 16
SAMPLED_FROM_BYTES = SAMPLE_BLOCK * SAMPLES
SHORT_DIGEST = 16  # hex characters of a sampled block's SHA-256 kept: 64 bits


class HashingWriter:
    """A binary file wrapper that hashes what is written through it (``np.save``, faiss and copies write to it)."""

    def __init__(self, handle):
        self._handle = handle
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        self.size += len(view)
        self._handle.write(view)
        return len(view)

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def write_checked(path: Path, write: Callable[[HashingWriter], None]) -> dict:
    """Write the file ``path`` (not atomically: callers write to a temporary name) through a :class:`HashingWriter`
    and return its record."""
    with open(path, "wb") as handle:
        writer = HashingWriter(handle)
        write(writer)
    with open(path, "rb") as handle:
        return record(writer.size, writer.hexdigest(), lambda offset, length: os.pread(handle.fileno(), length, offset))


def record(size: int, sha256: str, read_at: Callable[[int, int], bytes]) -> dict:
    """A file's record: size, SHA-256, and its sampled blocks' digests (read with ``read_at(offset, length)``)."""
    entry = {"bytes": size, "sha256": sha256}
    if size > SAMPLED_FROM_BYTES:
        entry["sampled"] = {"block": SAMPLE_BLOCK, "sha256": sampled_digests(size, SAMPLE_BLOCK, read_at)}
    return entry


def sample_offsets(size: int, block: int) -> list[int]:
    """:data:`SAMPLES` offsets from 0 to ``size - block``: the header, the tail and evenly between."""
    return np.linspace(0, max(0, size - block), SAMPLES).astype(np.int64).tolist()


def sampled_digests(size: int, block: int, read_at: Callable[[int, int], bytes]) -> list[str]:
    return [hashlib.sha256(read_at(offset, block)).hexdigest()[:SHORT_DIGEST] for offset in sample_offsets(size, block)]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def full_digest(fd: int, size: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        block = os.pread(fd, min(8 * 2**20, size - offset), offset)
        if not block:
            break
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def problem(fd: int, entry, full: bool = False) -> str | None:
    """What is wrong with the open file ``fd`` against its record ``entry`` (``None``: it matches). Without
    ``full`` a file above :data:`FULL_CHECK_BYTES` is checked by its sampled blocks only. Records of indexes
    written before checksums (a size only) check the size."""
    size = os.fstat(fd).st_size
    expected = entry if isinstance(entry, int) else entry.get("bytes")
    if size != expected:
        return f"{size} bytes, {expected} expected"
    if isinstance(entry, int) or "sha256" not in entry:
        return None
    sampled = entry.get("sampled")
    if full or size <= FULL_CHECK_BYTES or not sampled:
        return None if full_digest(fd, size) == entry["sha256"] else "its content differs from its checksum"
    read_at = lambda offset, length: os.pread(fd, length, offset)  # noqa: E731
    if sampled_digests(size, sampled["block"], read_at) != sampled["sha256"]:
        return "its content differs from its checksum (sampled blocks)"
    return None
