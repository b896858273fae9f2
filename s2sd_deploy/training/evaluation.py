"""Embedding a split with a trained model, and evaluating it on unseen classes.

The student is embedded with :meth:`EmbeddingModel.deployed`, the forward that export ships, so the
Recall@1 a run reports is the exported model's.
"""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import evaluate_embeddings
from .datasets import ImageSet
from .loading import eval_loader
from .model import EmbeddingModel


@torch.no_grad()
def embed_split(
    model: EmbeddingModel,
    images: ImageSet,
    cfg,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    with_teachers: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Student embeddings (N, d) and, if asked, every teacher's [(N, d_k)], in eval mode."""
    was_training = model.training
    model.eval()
    students, teachers = [], [[] for _ in model.teachers]
    deployed = model.deployed()
    for batch, _ in eval_loader(images, cfg, batch_size):
        batch = batch.to(device)
        if with_teachers:
            output = model(batch)
            student, heads = output.embeddings, output.teacher_embeddings
        else:
            student, heads = deployed(batch), []
        students.append(student.float().cpu())
        for store, embedding in zip(teachers, heads):
            store.append(embedding.float().cpu())
    model.train(was_training)
    teacher_arrays = [torch.cat(t).numpy() for t in teachers if t]
    return torch.cat(students).numpy(), teacher_arrays


def evaluate_model(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, float]:
    """Recall@k, NMI and mAP@R of the (deployed) student on the test split."""
    embeddings, _ = embed_split(model, test, cfg, device)
    return evaluate_embeddings(embeddings, test.labels, cfg.recall_ks)


def embed_heads(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, np.ndarray]:
    """Test-split embeddings of the student and of every teacher head, named ``student-d`` / ``teacher-d``."""
    student, teachers = embed_split(model, test, cfg, device, with_teachers=True)
    return {f"student-{student.shape[1]}": student, **{f"teacher-{t.shape[1]}": t for t in teachers}}


def evaluate_heads(model: EmbeddingModel, test: ImageSet, cfg, device="cpu") -> dict[str, dict[str, float]]:
    """:func:`evaluate_embeddings` of each head :func:`embed_heads` returns."""
    return {
        name: evaluate_embeddings(e, test.labels, cfg.recall_ks)
        for name, e in embed_heads(model, test, cfg, device).items()
    }
