"""Base DML criteria (from pytorch-metric-learning) and the S2SD loss built on them.

SPEC.md, for a batch of B samples with student embeddings e and teacher embeddings t_k:

    S = e e^T,  S_k = t_k t_k^T                                          (B, B)
    KL_k = (T^2 / B) * sum_i KL( softmax(S_k[i] / T) || softmax(S[i] / T) )   teacher detached
    L = 1/2 (L_dml(e) + mean_k L_dml_k(t_k)) + w mean_k KL_k
        [+ w_f KL(softmax(S_f / T) || softmax(S / T)) T^2 / B, once `delay` iterations have passed]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from torch import nn

from .model import ModelOutput


class MinedLoss(nn.Module):
    """A pytorch-metric-learning loss fed by its miner: ``loss(embeddings, labels, miner(...))``."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None = None):
        super().__init__()
        self.loss, self.miner = loss, miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)


def build_criterion(cfg, num_classes: int) -> MinedLoss:
    """One base criterion with SPEC.md's values set explicitly (pml's defaults differ)."""
    if cfg.criterion == "multisimilarity":
        return MinedLoss(
            losses.MultiSimilarityLoss(alpha=cfg.ms_pos_weight, beta=cfg.ms_neg_weight, base=cfg.ms_threshold),
            miners.MultiSimilarityMiner(epsilon=cfg.ms_mining_margin),
        )
    if cfg.criterion == "margin":
        return MinedLoss(
            losses.MarginLoss(margin=cfg.margin, nu=0.0, beta=cfg.margin_beta, learn_beta=True, num_classes=num_classes),
            miners.DistanceWeightedMiner(cutoff=cfg.dw_lower_cutoff, nonzero_loss_cutoff=cfg.dw_upper_cutoff),
        )
    if cfg.criterion == "triplet":
        return MinedLoss(
            losses.TripletMarginLoss(margin=cfg.margin),
            miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets="semihard"),
        )
    raise ValueError(cfg.criterion)  # config validation lists the valid choices


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(T^2 / B) sum_i KL(softmax(S_t[i]/T) || softmax(S_s[i]/T))`` of two (B, D) embedding sets.

    The teacher side is detached: this term trains only the student. Rows are normalised here,
    so the same function serves embeddings and raw features.
    """
    student = F.normalize(student, dim=-1)
    teacher = F.normalize(teacher.detach(), dim=-1)
    student_logits = student @ student.T / temperature  # (B, B)
    teacher_logits = teacher @ teacher.T / temperature  # (B, B)
    batch = student.shape[0]
    kl = F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                  reduction="sum", log_target=True)
    return kl * temperature**2 / batch


@dataclass
class LossParts:
    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)  # for logging, detached


class S2SDLoss(nn.Module):
    """The S2SD objective around a base criterion, with one criterion instance per teacher."""

    def __init__(
        self,
        make_criterion: Callable[[], nn.Module],
        num_teachers: int,
        distill_weight: float = 50.0,
        temperature: float = 1.0,
        feature_distill: bool = False,
        feature_weight: float = 50.0,
        feature_delay: int = 1000,
    ):
        super().__init__()
        self.student_criterion = make_criterion()
        # Separate instances: criteria with parameters (margin betas, proxies) learn per head.
        self.teacher_criteria = nn.ModuleList(make_criterion() for _ in range(num_teachers))
        self.distill_weight, self.temperature = distill_weight, temperature
        self.feature_distill, self.feature_weight, self.feature_delay = feature_distill, feature_weight, feature_delay

    def forward(self, output: ModelOutput, labels: torch.Tensor, step: int) -> LossParts:
        """``step`` is the 0-based training iteration; feature distillation is on from ``feature_delay``."""
        student_loss = self.student_criterion(output.embeddings, labels)
        if not self.teacher_criteria:  # plain baseline
            return LossParts(student_loss, {"dml": student_loss.item()})
        teacher_losses = torch.stack([
            criterion(t, labels) for criterion, t in zip(self.teacher_criteria, output.teacher_embeddings)
        ])
        distill = torch.stack([
            relational_kl(output.embeddings, t, self.temperature) for t in output.teacher_embeddings
        ])
        dml = 0.5 * (student_loss + teacher_losses.mean())
        total = dml + self.distill_weight * distill.mean()
        parts = {"dml": dml.item(), "distill": distill.mean().item()}
        if self.feature_distill and step >= self.feature_delay:
            feature_kl = relational_kl(output.embeddings, output.features, self.temperature)
            total = total + self.feature_weight * feature_kl
            parts["feature_distill"] = feature_kl.item()
        return LossParts(total, parts)


def build_loss(cfg, num_classes: int) -> S2SDLoss:
    """The training objective of a config: S2SD, or the plain criterion with ``s2sd=False``."""
    return S2SDLoss(
        lambda: build_criterion(cfg, num_classes),
        num_teachers=len(cfg.target_dims) if cfg.s2sd else 0,
        distill_weight=cfg.distill_weight,
        temperature=cfg.temperature,
        feature_distill=bool(cfg.feature_distill) and cfg.s2sd,
        feature_weight=cfg.feature_weight,
        feature_delay=cfg.feature_delay,
    )
