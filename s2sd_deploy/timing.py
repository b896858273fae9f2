"""The one timing helper: seconds per call with warm-up and repeats, alone or interleaved, their percentiles, and
how far they can be trusted.

A figure measured while another process competes for the cores is not the machine's: every benchmark records the
noise it measured itself, the spread between repeats of each figure (:func:`spread`, ``(p90 - p10) / median``)
and the load average before and after (:class:`LoadWatch`), and marks the figures it cannot trust
(:func:`noisy`; ratios of two figures inherit the mark).
"""

from __future__ import annotations

import os
import time

import numpy as np


def measure(
    function, warmup: int = 1, min_repeats: int = 5, max_repeats: int = 200, budget_s: float = 0.4, synchronize=None
) -> np.ndarray:
    """Seconds per call: warm-up calls, then repeats until ``budget_s`` (at least ``min_repeats``).
    ``synchronize`` (e.g. ``torch.cuda.synchronize``) runs inside each timed call, for asynchronous devices."""
    for _ in range(warmup):
        function()
    times = []
    started = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - started < budget_s):
        begin = time.perf_counter()
        function()
        if synchronize:
            synchronize()
        times.append(time.perf_counter() - begin)
    return np.array(times)


def measure_interleaved(functions: dict, min_rounds: int = 5, budget_s: float = 1.0) -> dict[str, np.ndarray]:
    """Seconds per call of each function, calling them in turn round after round after one warm-up round:
    their ratios then share the machine's state (caches, other threads, clock) instead of each getting its
    own moment."""
    for function in functions.values():
        function()
    times = {name: [] for name in functions}
    started = time.perf_counter()
    while len(times[next(iter(times))]) < min_rounds or time.perf_counter() - started < budget_s:
        for name, function in functions.items():
            begin = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - begin)
    return {name: np.array(values) for name, values in times.items()}


def latency_stats(seconds: np.ndarray, batch: int) -> dict:
    """p50/p95/p99 of what one query waits (its batch's call) in ms, queries per second, and the measurement's own
    noise: ``spread`` (see :func:`spread`) and ``noisy`` (too large to trust the figure)."""
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99]) * 1e3
    return {
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "qps": batch / seconds.mean(),
        "repeats": len(seconds),
        **noise(seconds),
    }


# --- how far a figure can be trusted ------------------------------------------------------------------------------
# (p90 - p10) / median above this: the repeats disagree too much for the median to mean much. Measured on a quiet
# 16-core machine (matrix products, torch and onnxruntime resnet18/50 at batch 1-32; 14 figures x 3): 0.04-0.43,
# mostly under 0.2; with every core taken by other processes, 0.3-3.9, or, where the scheduler hands out clean
# time slices, as low as 0.001 at many times the quiet median: so the load average must be watched as well.
NOISE_LIMIT = 0.5
MIN_REPEATS_TRUSTED = 3  # fewer repeats measure no spread at all
BUSY_LOAD_BEFORE = 0.5  # per core: other work kept half the cores busy before the benchmark started
BUSY_LOAD_AFTER = 1.5  # per core: the benchmark's own threads fill the cores (about 1); well above that, others ran


def spread(seconds: np.ndarray) -> float:
    """Relative spread of repeated timings of one thing: ``(p90 - p10) / median``. On a quiet machine a few
    percent; another process competing for the cores makes it large."""
    p10, p50, p90 = np.percentile(np.asarray(seconds, dtype=np.float64), [10, 50, 90])
    return float((p90 - p10) / p50) if p50 > 0 else float("inf")


def noise(seconds: np.ndarray) -> dict:
    """``{"spread", "noisy"}`` of repeated timings: noisy when the spread passes :data:`NOISE_LIMIT`, or when too
    few repeats were taken to measure one."""
    value = spread(seconds)
    return {"spread": value, "noisy": bool(value > NOISE_LIMIT or len(seconds) < MIN_REPEATS_TRUSTED)}


def noisy(*rows: dict) -> bool:
    """Whether a figure derived from these measurements (a ratio, say) inherits a noisy one."""
    return any(row.get("noisy", False) for row in rows)


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


class LoadWatch:
    """The machine's load average before a benchmark and after it: ``busy`` when other work kept more than
    :data:`BUSY_LOAD_BEFORE` of the cores busy before it started, or the load after it passed
    :data:`BUSY_LOAD_AFTER` per core (the benchmark's own threads account for about one). Every figure of a busy
    run is untrusted, however steady its repeats: a core shared in clean time slices gives slow, steady timings."""

    def __init__(self):
        self.before, self.after = load_average(), None
        self.cores = os.cpu_count() or 1

    def stop(self) -> dict:
        self.after = load_average()
        return self.summary()

    @property
    def busy(self) -> bool:
        before = self.before is not None and self.before > BUSY_LOAD_BEFORE * self.cores
        return before or (self.after is not None and self.after > BUSY_LOAD_AFTER * self.cores)

    def summary(self) -> dict:
        return {"before": self.before, "after": self.after, "cores": self.cores, "busy": self.busy}

    def note(self) -> str | None:
        """A line saying the machine was busy, for a benchmark's notes (None on a quiet machine)."""
        if not self.busy:
            return None
        return (
            f"the machine was busy (1-minute load average {self.before:.2f} before this run, {self.after:.2f} after, "
            f"on {self.cores} cores): other processes competed for the cores, so every timing here is marked as not "
            f"this machine's; rerun on a quiet machine before publishing them"
        )
