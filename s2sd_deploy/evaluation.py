"""Embedding a split with a trained model, and evaluating the student on unseen classes."""

from __future__ import annotations

import numpy as np
import torch

from .data import ImageSet, LabelledImages, eval_transform
from .metrics import evaluate_embeddings
from .model import EmbeddingModel


@torch.no_grad()
def embed_split(
    model: EmbeddingModel, images: ImageSet, cfg, device: torch.device | str = "cpu",
    batch_size: int = 128, with_teachers: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Student embeddings (N, d) and, if asked, every teacher's (N, d_k), in eval mode."""
    loader = torch.utils.data.DataLoader(
        LabelledImages(images, eval_transform(cfg)), batch_size=batch_size,
        num_workers=cfg.num_workers, shuffle=False,
    )
    was_training = model.training
    model.eval()
    students, teachers = [], [[] for _ in model.teachers]
    for batch, _ in loader:
        output = model(batch.to(device))
        students.append(output.embeddings.float().cpu())
        for store, embedding in zip(teachers, output.teacher_embeddings if with_teachers else []):
            store.append(embedding.float().cpu())
    model.train(was_training)
    teacher_arrays = [torch.cat(t).numpy() for t in teachers if t]
    return torch.cat(students).numpy(), teacher_arrays


def evaluate_model(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, float]:
    """Recall@k, NMI and mAP@R of the student on the test split."""
    embeddings, _ = embed_split(model, test, cfg, device)
    return evaluate_embeddings(embeddings, test.labels, cfg.recall_ks)


def embed_heads(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, np.ndarray]:
    """Test-split embeddings of the student and of every teacher head, named ``student-d`` / ``teacher-d``."""
    student, teachers = embed_split(model, test, cfg, device, with_teachers=True)
    return {f"student-{student.shape[1]}": student, **{f"teacher-{t.shape[1]}": t for t in teachers}}


def evaluate_heads(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, dict[str, float]]:
    """:func:`evaluate_embeddings` of each head :func:`embed_heads` returns."""
    return {name: evaluate_embeddings(e, test.labels, cfg.recall_ks) for name, e in embed_heads(model, test, cfg, device).items()}
