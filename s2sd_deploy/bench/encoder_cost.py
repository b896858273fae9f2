"""What the encoder costs per backend: PyTorch eager against ONNX Runtime (CPU; CUDA/TensorRT when present)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..metrics import parity
from ..timing import measure, noise


def encoder_cost(model, image_size: int, name: str, workdir: Path, budget_s: float = 1.0) -> list[dict]:
    """PyTorch eager vs ONNX Runtime (CPU; CUDA/TensorRT when present): batch 1 latency, batch 32 throughput."""
    import onnxruntime as ort

    from ..deploy.export import export_onnx
    from ..serving.embedder import choose_providers
    from ..serving.interface import INPUT

    deployed = model.eval().deployed()
    onnx_path = export_onnx(deployed, workdir / f"{name}.onnx", image_size)
    rows = []
    for provider in choose_providers():
        session = ort.InferenceSession(str(onnx_path), providers=[provider])
        if session.get_providers()[0] != provider:
            continue  # onnxruntime-gpu lists GPU providers it then cannot use
        for batch in (1, 32):
            images = torch.randn(batch, 3, image_size, image_size)
            with torch.no_grad():
                reference = deployed(images).numpy()
                eager = measure(lambda: deployed(images), budget_s=budget_s, min_repeats=3)
            got = session.run(None, {INPUT: images.numpy()})[0]
            runtime = measure(lambda: session.run(None, {INPUT: images.numpy()}), budget_s=budget_s, min_repeats=3)
            eager_noise, runtime_noise = noise(eager), noise(runtime)
            rows.append(
                {
                    "model": name,
                    "image_size": image_size,
                    "batch": batch,
                    "backend": provider,
                    "torch_ms_per_batch": float(np.median(eager) * 1e3),
                    "onnx_ms_per_batch": float(np.median(runtime) * 1e3),
                    "torch_images_per_s": batch / float(np.median(eager)),
                    "onnx_images_per_s": batch / float(np.median(runtime)),
                    "speedup": float(np.median(eager) / np.median(runtime)),
                    "torch_spread": eager_noise["spread"],
                    "onnx_spread": runtime_noise["spread"],
                    "noisy": eager_noise["noisy"] or runtime_noise["noisy"],  # and so is their ratio
                    **parity(reference, got),
                }
            )
    return rows


def encoder_part(run, deadline, progress) -> list[dict]:
    """Encoder cost of the run's model (if any) and of the paper's resnet50 at 224 px, within ``deadline``."""
    from ..training.model import build_embedding_model

    jobs = []
    if run:
        jobs.append((lambda: run.load_model()[0], run.config.image_size, "run"))
    jobs.append((lambda: build_embedding_model("resnet50", 128), 224, "resnet50"))  # the paper's encoder
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for load, size, name in jobs:
            if deadline.passed:
                deadline.skip(f"encoder cost of {name}")
                continue
            progress(f"encoder cost: {name} at {size} px")
            rows += encoder_cost(load(), size, name, Path(workdir))
    return rows
