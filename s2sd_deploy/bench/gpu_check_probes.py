"""What the GPU check asks of a machine in-process (each probe runs as one step, in its own process): the
environment with its versions and the torch APIs the product calls, and ``Embedder`` on every execution provider.
"""

from __future__ import annotations

import inspect
import os
import platform
import shutil
import subprocess
import time
from importlib import metadata, util

import numpy as np

from .machine import cpu_model

PACKAGES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxscript",
    "onnx-ir",
    "onnxruntime",
    "onnxruntime-gpu",
    "faiss-cpu",
    "faiss-gpu",
    "tensorrt",
    "numpy",
    "safetensors",
    "matplotlib",
    "pillow",
    "scikit-learn",
    "scipy",
    "typer",
    "s2sd-deploy",
)
PINNED = {"torch": "2.14.1", "torchvision": "0.29.1", "python": "3.11"}  # pyproject's train extra; the README


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --- the environment ----------------------------------------------------------------------------
def environment() -> dict:
    """The machine, every library version that matters, the GPU as torch and nvidia-smi see it, and whether each
    torch API the product calls exists in this torch."""
    import torch

    versions = {p: version(p) for p in PACKAGES}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": {p: v for p, v in versions.items() if v},
        "absent_packages": [p for p, v in versions.items() if not v],
        "torch": torch_build(),
        "gpu": gpu_description(),
        "onnxruntime_providers": onnxruntime_providers(),
        "faiss_gpus": faiss_gpus(),
        "torch_api": torch_api(),
        "differs_from_pinned": differs_from_pinned(torch.__version__),
    }


def torch_build() -> dict:
    import torch

    build = {
        "version": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    try:
        build["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    except (AttributeError, RuntimeError) as error:
        build["nccl"] = f"unknown ({error})"
    return build


def gpu_description() -> dict | None:
    """GPU 0 as torch describes it, and nvidia-smi's line (driver, memory), when there is one."""
    import torch

    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    description = {
        "name": properties.name,
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "capability": f"{properties.major}.{properties.minor}",
        "multiprocessors": properties.multi_processor_count,
        "count": torch.cuda.device_count(),
    }
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True)
        description["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return description


def onnxruntime_providers() -> list[str] | str:
    try:
        import onnxruntime as ort
    except ImportError as error:
        return f"onnxruntime not importable: {error}"
    return ort.get_available_providers()


def faiss_gpus() -> int | str:
    try:
        from ..gpu import faiss_gpu_count

        return faiss_gpu_count()
    except ImportError as error:
        return f"faiss not importable: {error}"


def torch_api() -> dict[str, str]:
    """Each torch / torchvision API the product's training, export and GPU paths call: "ok", or what is missing."""
    import torch
    import torch.distributed as dist
    import torchvision

    def parameters(function, *names):
        missing = [n for n in names if n not in inspect.signature(function).parameters]
        assert not missing, f"no parameter {', '.join(missing)}"

    def has(owner, *names):
        missing = [n for n in names if not hasattr(owner, n)]
        assert not missing, f"no {', '.join(missing)}"

    def backend(name):
        assert dist.is_available() and getattr(dist, f"is_{name}_available")(), f"this torch has no {name} backend"

    checks = {
        "torch.amp.GradScaler(device, enabled)": lambda: parameters(torch.amp.GradScaler, "device", "enabled"),
        "torch.autocast(device_type, dtype)": lambda: parameters(torch.autocast, "device_type", "dtype"),
        "torch.onnx.export(dynamo, optimize, external_data, dynamic_shapes, opset_version)": lambda: parameters(
            torch.onnx.export, "dynamo", "optimize", "external_data", "dynamic_shapes", "opset_version"
        ),
        "torch.export.Dim": lambda: has(torch.export, "Dim"),
        "onnxscript (the dynamo exporter's)": lambda: __import__("onnxscript"),
        "torchvision.models.list_models / get_model / get_model_weights": lambda: has(
            torchvision.models, "list_models", "get_model", "get_model_weights"
        ),
        "torch.distributed with gloo": lambda: backend("gloo"),
        "torch.distributed with nccl": lambda: backend("nccl"),
        "torch.nn.parallel.DistributedDataParallel": lambda: has(torch.nn.parallel, "DistributedDataParallel"),
        "torch.cuda.synchronize / get_device_properties": lambda: has(
            torch.cuda, "synchronize", "get_device_properties"
        ),
        "safetensors.torch load_file / save_file / safe_open": lambda: has(
            __import__("safetensors.torch").torch, "load_file", "save_file", "safe_open"
        ),
    }
    results = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = "ok"
        except Exception as error:  # whatever a missing API raises is the finding
            results[name] = f"missing: {error or type(error).__name__}"
    return results


def differs_from_pinned(torch_version: str) -> list[str]:
    """What this environment runs instead of the versions the project pins and tests."""
    found = {
        "torch": torch_version.split("+")[0],
        "torchvision": (version("torchvision") or "absent").split("+")[0],
        "python": ".".join(platform.python_version_tuple()[:2]),
    }
    return [f"{name} {found[name]} (pinned {pinned})" for name, pinned in PINNED.items() if found[name] != pinned]


# --- Embedder on every execution provider --------------------------------------------------------
def embedder_providers(model_path: str, run_dir: str, device: str, limit: int) -> dict:
    """Embed the first ``limit`` test images of ``run_dir`` through ``Embedder`` (the production preprocessing) on
    each execution provider, against the run's PyTorch model on ``device`` in strict fp32; absent providers are
    listed with the reason. Also: which provider ``Embedder`` picks by itself, and the tensorrt package."""
    import onnxruntime as ort

    from ..deploy.verify import MAX_ABS_DIFF, MIN_COSINE
    from ..metrics import parity
    from ..serving.embedder import PREFERRED_PROVIDERS, Embedder

    sources, references = torch_references(run_dir, device, limit)
    available = ort.get_available_providers()
    providers = {}
    for provider in PREFERRED_PROVIDERS:
        if provider not in available:
            providers[provider] = {"status": "absent", "reason": provider_absence(provider, available)}
            continue
        try:
            embedder = Embedder(model_path, providers=[provider])
            started = time.perf_counter()
            embeddings = embedder.embed(sources)
            seconds = time.perf_counter() - started
        except Exception as error:  # onnxruntime's own error types: the finding is the message
            providers[provider] = {"status": "failed", "reason": str(error).splitlines()[0][:300]}
            continue
        figures = {name: parity(reference, embeddings) for name, reference in references.items()}
        strict = figures["fp32"]
        passed = strict["max_abs_diff"] <= MAX_ABS_DIFF and strict["min_cosine"] >= MIN_COSINE
        providers[provider] = {
            "status": "ok" if embedder.provider == provider and passed else "failed",
            "ran_on": embedder.provider,
            "images": len(sources),
            "images_per_s": len(sources) / seconds,
            "parity_vs_torch": figures,
            "bounds": {"max_abs_diff": MAX_ABS_DIFF, "min_cosine": MIN_COSINE},
        }
        if embedder.provider != provider:
            providers[provider]["reason"] = f"asked for {provider}, onnxruntime ran {embedder.provider}"
        elif not passed:
            providers[provider]["reason"] = "outside the fp32 parity bounds against PyTorch"
    return {
        "providers": providers,
        "automatic_choice": Embedder(model_path).provider,
        "torch_reference": f"the run's deployed model on {device}, strict fp32 (no TF32); 'tf32' is torch's default",
        "tensorrt_package": version("tensorrt")
        or ("importable" if util.find_spec("tensorrt") else "absent: pip install tensorrt (not on this machine)"),
    }


def torch_references(run_dir: str, device: str, limit: int) -> tuple[list, dict[str, np.ndarray]]:
    """The first ``limit`` test images of the run (as its dataset holds them) and the deployed PyTorch model's
    embeddings of them on ``device``: strict fp32, and (on CUDA) with torch's default TF32 convolutions."""
    import torch

    from ..training.datasets import splits_for
    from ..training.loading import eval_loader
    from ..training.run_dir import RunDir

    run = RunDir.open(run_dir)
    model, _ = run.load_model()
    deployed = model.deployed().eval().to(device)
    _, test = splits_for(run.config)
    test.sources, test.labels = test.sources[:limit], test.labels[:limit]
    settings = {"fp32": False, "tf32": True} if device == "cuda" else {"fp32": False}
    references = {}
    for name, tf32 in settings.items():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad():
            batches = [deployed(images.to(device)).float().cpu() for images, _ in eval_loader(test, run.config, 64)]
        references[name] = torch.cat(batches).numpy()
    return test.sources, references


def provider_absence(provider: str, available: list[str]) -> str:
    import onnxruntime as ort

    build = "onnxruntime-gpu" if version("onnxruntime-gpu") else "onnxruntime (the CPU build)"
    return (
        f"{build} {ort.__version__} offers {', '.join(available)}; {provider} comes with onnxruntime-gpu"
        + (" and TensorRT's libraries" if provider.startswith("Tensorrt") else "")
        + ", which are not installed"
    )
