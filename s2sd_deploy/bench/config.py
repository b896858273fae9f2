"""Options of ``s2sd bench-latency`` (no torch, so the command line can refuse bad ones at once)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import S2SDError
from ..output_folders import claim_output_folder

APPROXIMATE = ("hnsw", "ivfpq")
IVFPQ_MIN_GALLERY = 256
RESULTS = (
    "results.json"  # what marks a folder as bench-latency's  # product quantisation trains 2^8 centroids per sub-vector
)


@dataclass
class BenchConfig:
    """Options of ``s2sd bench-latency``; saved in results.json."""

    run: str | None = None  # run directory for the accuracy and encoder parts (None: latest in runs/)
    dims: list[int] | None = None  # None: the student's d (128 without a run), 512, 1024, 2048
    gallery_sizes: list[int] = field(default_factory=lambda: [10_000, 100_000])
    large: bool = False  # add a 1e6 gallery
    query_batches: list[int] = field(default_factory=lambda: [1, 64])
    indexes: list[str] = field(default_factory=lambda: ["flat", "ivfpq"])  # hnsw builds slowly at 2048-d
    k: int = 10
    shortlists: list[int] = field(default_factory=lambda: [50, 100])
    device: str = "cpu"
    out: str = "bench-latency"
    max_seconds: float = 170.0  # the whole default run stays within 3 minutes
    encoder: bool = True
    seed: int = 0
    force: bool = False  # replace earlier results in --out

    def validate(self) -> None:
        """Checked before anything is measured or allocated."""
        unknown = [i for i in self.indexes if i not in ("flat", *APPROXIMATE)]
        if unknown or not self.indexes:
            raise S2SDError(f"invalid --index {','.join(self.indexes)!r}; choose from: flat, hnsw, ivfpq")
        if self.device not in ("cpu", "gpu"):
            raise S2SDError(f"invalid --device {self.device!r}; choose one of: cpu, gpu")
        for option, values in (
            ("--gallery-sizes", self.gallery_sizes),
            ("--query-batch", self.query_batches),
            ("--dims", self.dims or [1]),
        ):
            if not values or min(values) < 1:
                raise S2SDError(f"{option} takes one or more positive whole numbers, e.g. 10000,100000; got {values!r}")
        if "ivfpq" in self.indexes and min(self.gallery_sizes) < IVFPQ_MIN_GALLERY:
            raise S2SDError(
                f"--gallery-sizes {min(self.gallery_sizes)} is too small for ivfpq: its 256-centroid "
                f"codebooks need at least {IVFPQ_MIN_GALLERY} vectors to train; use --index flat,hnsw "
                f"or larger galleries"
            )
        if not math.isfinite(self.max_seconds) or self.max_seconds <= 0:
            raise S2SDError(f"--max-seconds must be a positive number of seconds, got {self.max_seconds}")
        claim_output_folder(self.out, "--out", what="bench-latency results", owner_files=[RESULTS], force=self.force)
