"""The one timing helper: seconds per call with warm-up and repeats, alone or interleaved, and their percentiles."""

from __future__ import annotations

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
    """p50/p95/p99 of what one query waits (its batch's call) in ms, and queries per second."""
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99]) * 1e3
    return {"p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "qps": batch / seconds.mean(), "repeats": len(seconds)}
