"""The export's proof: ONNX Runtime (CPU) and the deployed PyTorch model embed a run's test split alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..metrics import nearest_neighbours, parity, recall_at_k
from ..serving.interface import INPUT, OUTPUT, TEACHER_OUTPUT
from ..training.datasets import splits_for
from ..training.loading import eval_loader
from ..training.model import DeployedModel

MAX_ABS_DIFF, MIN_COSINE = 1e-5, 0.99999  # fp32 parity bounds


@torch.no_grad()
def torch_embeddings(deployed: DeployedModel, loader) -> list[np.ndarray]:
    outputs = [[], []]
    for images, _ in tqdm(loader, desc="verifying: PyTorch", unit="batch", leave=False):
        result = deployed(images)
        for store, tensor in zip(outputs, result if isinstance(result, tuple) else (result,)):
            store.append(tensor.numpy())
    return [np.concatenate(o) for o in outputs if o]


def onnx_embeddings(onnx_path: Path, loader) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = [[] for _ in session.get_outputs()]
    for images, _ in tqdm(loader, desc="verifying: ONNX Runtime", unit="batch", leave=False):
        for store, array in zip(outputs, session.run(None, {INPUT: images.numpy()})):
            store.append(array)
    return [np.concatenate(o) for o in outputs]


def compare_embeddings(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """Max abs difference, min row cosine and Recall@1 of both embedding sets."""
    recall = [recall_at_k(labels[nearest_neighbours(e, 1)], labels, [1])[1] for e in (reference, candidate)]
    figures = {
        **parity(reference, candidate),
        "recall@1_torch": recall[0],
        "recall@1_onnxruntime": recall[1],
        "images": int(len(labels)),
    }
    figures["passed"] = (
        figures["max_abs_diff"] <= MAX_ABS_DIFF
        and figures["min_cosine"] >= MIN_COSINE
        and figures["recall@1_torch"] == figures["recall@1_onnxruntime"]
    )
    return figures


def verify_onnx(deployed: DeployedModel, onnx_path: Path, cfg, limit: int | None = None) -> dict:
    """Embed the run's test split with the deployed PyTorch model and ONNX Runtime; check the fp32 bounds."""
    _, test = splits_for(cfg)
    if limit:
        test.sources, test.labels = test.sources[:limit], test.labels[:limit]
    loader = eval_loader(test, cfg, batch_size=64)
    reference = torch_embeddings(deployed.eval(), loader)
    candidate = onnx_embeddings(onnx_path, loader)
    names = [OUTPUT, TEACHER_OUTPUT][: len(reference)]
    return {name: compare_embeddings(r, c, test.labels) for name, r, c in zip(names, reference, candidate)}


def parity_failure(report: dict) -> str | None:
    """The first broken bound, as the one-line message of a failed export; None when all hold."""
    for name, figures in report.items():
        if not figures["passed"]:
            return (
                f"ONNX Runtime and PyTorch disagree on {name}: max |diff| {figures['max_abs_diff']:.2e} "
                f"(bound {MAX_ABS_DIFF}), min cosine {figures['min_cosine']:.7f} (bound {MIN_COSINE}), Recall@1 "
                f"{figures['recall@1_torch']:.4f} vs {figures['recall@1_onnxruntime']:.4f}"
            )
    return None
