"""The one home for GPU detection, and for the one-line messages that name what is missing.

Each question has one function: is an NVIDIA GPU visible at all (no torch needed), can faiss use a GPU.
(Whether torch can use CUDA is torch's own question: training asks ``torch.cuda.is_available()``.)
Callers that need one raise :class:`~s2sd_deploy.errors.MissingDependencyError` (exit code 3) with these texts.
"""

from __future__ import annotations

import shutil
from pathlib import Path

GPU_EXTRA = "on an NVIDIA machine: pip install 's2sd-deploy[gpu]' (onnxruntime-gpu, faiss-gpu, tensorrt)"


def nvidia_gpu_visible() -> bool:
    """An NVIDIA driver with a GPU is present (nvidia-smi, or the driver's /proc entries)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return shutil.which("nvidia-smi") is not None or (gpus.is_dir() and any(gpus.iterdir()))


def faiss_gpu_count() -> int:
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
