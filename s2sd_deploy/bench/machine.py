"""The machine a benchmark runs on: what it is (CPU, cores, memory, accelerators, library versions), what it can
do (read bandwidth, GEMM throughput, measured), and how much memory is free."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import numpy as np

from ..errors import S2SDError
from ..timing import measure


def cpu_model() -> str:
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
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {p: v for p in packages if (v := _version(p))},
    }


def machine_limits(device: str = "cpu", budget_s: float = 0.4) -> dict:
    """The machine's read bandwidth and fp32 GEMM throughput (``device="gpu"``: the GPU's, :func:`gpu_limits`),
    measured the way the search kernels run: with each library they use (numpy's BLAS, torch's, faiss's own scan),
    all threads, and shapes like theirs; the fastest measurement is the limit.

    - read bandwidth: a batch-1 scan, the product of a 256 MiB float32 matrix (65,536 x 1,024) with a vector. It
      describes the machine; each search is held to the read speed of its own gallery instead
      (``retrieval_cost.read_speed_gbs``), because on a CPU with large caches a 200 MiB gallery reads faster
      than a 256 MiB one;

    - GEMM: a batch-64 search's product, (64 x 2,048) x (2,048 x 32,768), and a square 2,048^3 one.
    """
    if device == "gpu":
        return gpu_limits(budget_s)
    import faiss
    import torch

    matrix = np.ones((65_536, 1_024), dtype=np.float32)  # 256 MiB: far beyond any cache; values do not matter
    vector = np.ones((1, 1_024), dtype=np.float32)
    flat = faiss.IndexFlatIP(1_024)
    flat.add(matrix)
    tensor, tensor_vector = torch.from_numpy(matrix), torch.from_numpy(vector[0])
    scans = {
        "numpy": lambda: matrix @ vector[0],
        "torch": lambda: tensor @ tensor_vector,
        "faiss": lambda: flat.search(vector, 1),
    }
    bandwidth = {name: matrix.nbytes / measure(scan, budget_s=budget_s).min() / 1e9 for name, scan in scans.items()}
    shapes = {"batch-64 search": (64, 2_048, 32_768), "square": (2_048, 2_048, 2_048)}
    gemm = {}
    for shape_name, (m, k, n) in shapes.items():
        a, b = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for library, product in (("numpy", lambda: a @ b), ("torch", lambda: ta @ tb)):
            gemm[f"{library}, {shape_name}"] = 2 * m * k * n / measure(product, budget_s=budget_s).min() / 1e9
    return {
        "memory_bandwidth_gbs": max(bandwidth.values()),
        "gemm_gflops": max(gemm.values()),
        "bandwidth_by_library_gbs": bandwidth,
        "gemm_by_library_and_shape_gflops": gemm,
        "threads": torch.get_num_threads(),
        "how": "bandwidth: the fastest batch-1 scan (matrix-vector product) of a 256 MiB float32 matrix by numpy, "
        "torch and faiss, all threads; GEMM: the fastest of numpy and torch on a batch-64 search's product "
        "(64 x 2048 x 32768) and a square 2048^3 one",
    }


def gpu_limits(budget_s: float = 0.4) -> dict:
    """GPU 0's read bandwidth and fp32 GEMM throughput, measured with torch's CUDA kernels (what the GPU search
    kernels run) under the precision they run at (``torch.get_float32_matmul_precision()``), synchronised; the
    fastest measurement is the limit.

    - read bandwidth: a batch-1 scan, the product of a 4 GiB float32 matrix (1,048,576 x 1,024; far beyond the
      L2 cache) with a vector, and a device-to-device copy of it (bytes read only);
    - GEMM: a batch-64 search's product, (64 x 2,048) x (2,048 x 1,048,576), and a square 8,192^3 one.
    """
    import torch

    bandwidth = _gpu_read_gbs(budget_s)
    shapes = {"batch-64 search": (64, 2_048, 1_048_576), "square": (8_192, 8_192, 8_192)}
    gemm = {f"torch, {name}": _gpu_gemm_gflops(*shape, budget_s=budget_s) for name, shape in shapes.items()}
    torch.cuda.empty_cache()
    return {
        "memory_bandwidth_gbs": max(bandwidth.values()),
        "gemm_gflops": max(gemm.values()),
        "bandwidth_by_library_gbs": bandwidth,
        "gemm_by_library_and_shape_gflops": gemm,
        "device": torch.cuda.get_device_name(0),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "how": "GPU 0 with torch: bandwidth, the fastest batch-1 scan (matrix-vector product) and device-to-device "
        "copy (bytes read) of a 4 GiB float32 matrix; GEMM, the fastest fp32 product of a batch-64 search's shape "
        "(64 x 2048 x 1048576) and a square 8192^3 one, at torch's float32 matmul precision; synchronised timing",
    }


def _gpu_read_gbs(budget_s: float) -> dict[str, float]:
    import torch

    matrix = torch.ones((1_048_576, 1_024), dtype=torch.float32, device="cuda")  # 4 GiB; values do not matter
    vector, copy = torch.ones(1_024, dtype=torch.float32, device="cuda"), torch.empty_like(matrix)
    scans = {"torch matrix-vector": lambda: matrix @ vector, "torch copy (read bytes)": lambda: copy.copy_(matrix)}
    return {
        name: matrix.numel() * 4 / measure(scan, budget_s=budget_s, synchronize=torch.cuda.synchronize).min() / 1e9
        for name, scan in scans.items()
    }


def _gpu_gemm_gflops(m: int, k: int, n: int, budget_s: float) -> float:
    import torch

    a, b = torch.rand((m, k), device="cuda"), torch.rand((k, n), device="cuda")  # constant data draws less power
    return 2 * m * k * n / measure(lambda: a @ b, budget_s=budget_s, synchronize=torch.cuda.synchronize).min() / 1e9


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
