"""The machine a benchmark runs on: what it is (CPU, cores, memory, accelerators, library versions), what it can
do (read bandwidth, GEMM throughput, measured), and how much memory is free."""

from __future__ import annotations

import os
import platform
from importlib import metadata

from ..errors import S2SDError
from ..timing import measure


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * page_size / 2**30, 1)
    except (ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """A JSON-able description of this machine and the libraries that matter for speed."""
    import torch

    packages = (
        "s2sd-deploy",
        "torch",
        "torchvision",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "faiss-cpu",
        "faiss-gpu",
        "tensorrt",
        "numpy",
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {p: v for p in packages if (v := _version(p))},
    }


def machine_limits(budget_s: float = 0.5) -> dict:
    """Measured read bandwidth (GB/s, summing a 512 MiB array) and fp32 GEMM throughput (GFLOP/s)."""
    import torch

    big = torch.ones(128 * 2**20)  # 512 MiB, far beyond any cache
    read = measure(lambda: big.sum(), budget_s=budget_s).min()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = measure(lambda: a @ b, budget_s=budget_s).min()
    return {
        "memory_bandwidth_gbs": big.numel() * 4 / read / 1e9,
        "gemm_gflops": 2 * 2048**3 / gemm / 1e9,
        "threads": torch.get_num_threads(),
    }


def available_memory_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**63


def estimate_memory_bytes(cfg, dims: list[int]) -> int:
    """Peak bytes of the largest regime: the widest gallery, a copy per index, one score matrix."""
    largest = max(cfg.gallery_sizes) * (10 if cfg.large else 1)
    gallery = largest * max(dims) * 4
    copies = 1 + len(cfg.indexes)  # exact kernels share one copy; each index holds another at most
    scores = max(cfg.query_batches) * largest * 4 * 2
    return gallery * (copies + 1) + scores  # +1: the un-normalised source the dims are cut from


def check_memory(cfg, dims: list[int]) -> int:
    """Refuse before allocating anything when the estimate exceeds available memory."""
    needed, available = estimate_memory_bytes(cfg, dims), available_memory_bytes()
    if needed > available:
        raise S2SDError(
            f"this configuration needs about {needed / 2**30:.1f} GiB but {available / 2**30:.1f} GiB is available; "
            f"drop --large, or lower --gallery-sizes / --dims"
        )
    return needed
