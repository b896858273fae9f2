"""Base DML criteria with the reference implementation's semantics, and the S2SD loss built on them.

The paper (Roth et al., ICML 2021), for a batch of B samples with student embeddings e and teacher embeddings t_k:

    S = e e^T,  S_k = t_k t_k^T                                          (B, B)
    KL_k = (T^2 / B) * sum_i KL( softmax(S_k[i] / T) || softmax(S[i] / T) )   teacher detached
    L = 1/2 (L_dml(e) + mean_k L_dml_k(t_k)) + w mean_k KL_k
        [+ w_f KL(softmax(S_f / T) || softmax(S / T)) T^2 / B, once `delay` iterations have passed]

Criteria (each reduces like the reference, which is what the paper's numbers come from):

- ``multisimilarity``: mined pairs, averaged over the anchors that have mined pairs. Equal to
  pytorch-metric-learning's loss and miner with an ``AvgNonZeroReducer`` (a test checks it), written here
  because the library's is several times slower, with five calls per step (see :class:`MultiSimilarity`).
- ``margin``: one triplet per anchor, its negative drawn by distance-weighted sampling. The library's
  miner cuts distances above 1.4 (the reference does not), uses another distance and draws its
  triplets differently.
- ``triplet``: one random positive and one random semi-hard negative per anchor, squared distances,
  mean over anchors. The library's miner returns every semi-hard triplet.

Sampling draws from torch's global generator, which training seeds per (seed, epoch), so a resumed
run samples the same triplets as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .model import ModelOutput

DISTANCE_EPS = 1e-8  # distances are sqrt(sum of squares + 1e-8), as in the reference


@dataclass
class Triplets:
    """Index tensors of sampled triplets, one per anchor that has a positive and a negative."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor


# --- shared pieces ------------------------------------------------------------------------------
def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """(B, B) squared Euclidean distances of the rows of x (B, D), without a (B, B, D) intermediate."""
    norms = (x * x).sum(1)
    return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)


def triplet_rows(x: torch.Tensor, triplets: Triplets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The anchor, positive and negative rows (T, D) of x, gathered in one index_select: on the CPU its backward
    (index_add) is much faster than indexing's (index_put), and one call costs less than three."""
    rows = x.index_select(0, torch.cat([triplets.anchors, triplets.positives, triplets.negatives]))
    return rows.chunk(3)


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sqrt(||a - b||^2 + 1e-8)`` per row, from the difference itself (exact gradients)."""
    return ((a - b).pow(2).sum(1) + DISTANCE_EPS).sqrt()


def class_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) boolean masks: positives (same class, not self) and negatives (other class)."""
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return positives, ~same


def sample_columns(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One column per row of ``weights`` (R, B), drawn with probability proportional to the row; returns the
    columns (R,) and which rows had any weight to draw from (R,). Inverse-CDF sampling: on the CPU
    torch.multinomial took a fifth of a whole criterion's time."""
    cumulative = weights.cumsum(1)  # (R, B)
    total = cumulative[:, -1:]
    # Strictly below the total even after rounding, so no draw lands past the last weighted column.
    draws = torch.rand(total.shape, device=weights.device, dtype=total.dtype) * total * (1 - 2**-22)
    columns = torch.searchsorted(cumulative, draws, right=True).squeeze(1)
    return columns.clamp_max(weights.shape[1] - 1), total.squeeze(1) > 0


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A 0 that is still connected to the graph, so backward() works and every gradient is 0."""
    return (embeddings * 0).sum()


# --- criteria -------------------------------------------------------------------------------------
def log_one_plus_sum_exp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row, ``log(1 + sum of exp(logits) over mask)``, stable for large logits; (B, B) -> (B,)."""
    masked = logits.masked_fill(~mask, float("-inf"))
    return torch.logsumexp(torch.cat([torch.zeros_like(masked[:, :1]), masked], dim=1), dim=1)


class MultiSimilarity(nn.Module):
    """Multisimilarity loss (Wang et al. 2019) on mined pairs, averaged over the anchors that have mined pairs.

    Per anchor i with cosine similarities s: negatives are mined where ``s_in + margin > min_p s_ip``,
    positives where ``s_ip - margin < max_n s_in``, and ``loss_i = log(1 + sum_p exp(-a (s_ip - t))) / a +
    log(1 + sum_n exp(b (s_in - t))) / b``. The batch loss is the mean over anchors with mined pairs, 0
    (with zero gradients) when none has any. pytorch-metric-learning's MultiSimilarityLoss + miner with an
    AvgNonZeroReducer compute the same (a test checks it), several times slower: with five calls per step
    that alone was a third of the S2SD objective's floor (bench/results/s2sd_overhead.md).
    """

    def __init__(
        self, pos_weight: float = 2.0, neg_weight: float = 40.0, threshold: float = 0.5, mining_margin: float = 0.1
    ):
        super().__init__()
        self.pos_weight, self.neg_weight, self.threshold, self.mining_margin = (
            pos_weight,
            neg_weight,
            threshold,
            mining_margin,
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``embeddings`` (B, D) have unit rows (the model's heads normalise), so their products are cosines."""
        similarity = embeddings @ embeddings.T  # (B, B)
        mined_positives, mined_negatives = self.mine(similarity.detach(), labels)
        has_pairs = mined_positives.any(1) & mined_negatives.any(1)
        positive_term = log_one_plus_sum_exp(-self.pos_weight * (similarity - self.threshold), mined_positives)
        negative_term = log_one_plus_sum_exp(self.neg_weight * (similarity - self.threshold), mined_negatives)
        per_anchor = positive_term / self.pos_weight + negative_term / self.neg_weight  # (B,)
        # Rows without mined pairs are log(1) = 0 with finite gradients, so masking them needs no device sync.
        return torch.where(has_pairs, per_anchor, 0).sum() / has_pairs.sum().clamp_min(1)

    def mine(self, similarity: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, B) masks of the mined positives and negatives of every anchor (row)."""
        positives, negatives = class_masks(labels)
        hardest_positive = similarity.masked_fill(~positives, float("inf")).amin(1, keepdim=True)
        hardest_negative = similarity.masked_fill(~negatives, float("-inf")).amax(1, keepdim=True)
        mined_negatives = negatives & (similarity + self.mining_margin > hardest_positive)
        mined_positives = positives & (similarity - self.mining_margin < hardest_negative)
        return mined_positives, mined_negatives


def triplets_from(positive_weights: torch.Tensor, negative_weights: torch.Tensor) -> Triplets:
    """One triplet per anchor (row) that can draw both a positive and a negative from its (B, B) weights."""
    columns, valid = sample_columns(torch.cat([positive_weights, negative_weights]))  # one draw for both
    positives, negatives = columns.chunk(2)
    has_positive, has_negative = valid.chunk(2)
    anchors = torch.nonzero(has_positive & has_negative).squeeze(1)
    return Triplets(anchors, positives[anchors], negatives[anchors])


def distance_weighted_negatives(
    embeddings: torch.Tensor, labels: torch.Tensor, lower_cutoff: float = 0.5, upper_cutoff: float | None = None
) -> torch.Tensor:
    """(B, B) weights (unnormalised probabilities) of drawing column j as row i's negative: the inverse density
    of distances between points on the unit sphere of dimension d, ``dist^(2-d) (1 - dist^2/4)^(-(d-3)/2)``,
    with distances clamped below at ``lower_cutoff``; same-class entries (and, if set, distances above
    ``upper_cutoff``) get 0. Rows without any negative are all 0."""
    d = embeddings.shape[1]
    with torch.no_grad():
        squared = (squared_distances(embeddings.float()) + DISTANCE_EPS).clamp_min(lower_cutoff**2)
        # log dist = log(dist^2) / 2. Antipodal pairs make 1 - dist^2/4 <= 0: clamped to a large finite weight.
        log_weight = (2.0 - d) / 2 * squared.log() - (d - 3) / 2 * (1 - squared / 4).clamp_min(1e-8).log()
        _, negatives = class_masks(labels)
        allowed = negatives if upper_cutoff is None else negatives & (squared < upper_cutoff**2)
        log_weight = log_weight.masked_fill(~allowed, float("-inf"))
        top = log_weight.amax(1, keepdim=True).clamp_min(torch.finfo(log_weight.dtype).min)
        return (log_weight - top).exp()  # exp(-inf) = 0 for the masked entries


class DistanceWeightedMargin(nn.Module):
    """Margin loss (Wu et al. 2017) on one distance-weighted triplet per anchor, with a learnable beta per class.

    ``loss = sum(relu(d_ap - beta_y + margin) + relu(beta_y - d_an + margin)) / (#pos terms > 0 + #neg terms > 0)``,
    the plain sum when no term is positive; ``beta_y`` is the anchor's class beta.
    """

    def __init__(
        self,
        num_classes: int,
        margin: float = 0.2,
        beta: float = 1.2,
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
    ):
        super().__init__()
        self.margin, self.lower_cutoff, self.upper_cutoff = margin, lower_cutoff, upper_cutoff
        self.beta = nn.Parameter(torch.full((num_classes,), float(beta)))

    def sample(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        """A random positive (uniform over the anchor's class) and a distance-weighted negative per anchor."""
        positives, _ = class_masks(labels)
        weights = distance_weighted_negatives(embeddings, labels, self.lower_cutoff, self.upper_cutoff)
        return triplets_from(positives.to(weights.dtype), weights)

    def triplet_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        if len(triplets.anchors) == 0:
            return zero_loss(embeddings)
        anchor, positive, negative = triplet_rows(embeddings, triplets)
        beta = self.beta[labels[triplets.anchors]]
        positive_terms = F.relu(distance(anchor, positive) - beta + self.margin)
        negative_terms = F.relu(beta - distance(anchor, negative) + self.margin)
        active = (positive_terms > 0).sum() + (negative_terms > 0).sum()
        total = (positive_terms + negative_terms).sum()
        return total / active.clamp_min(1)  # the plain sum when no term is positive

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.triplet_loss(embeddings, labels, self.sample(embeddings, labels))


class SemihardTriplet(nn.Module):
    """Triplet loss on one random positive and one random semi-hard negative per anchor (a random negative
    when the anchor has no semi-hard one): ``mean(relu(|a - p|^2 - |a - n|^2 + margin))`` over anchors.
    Semi-hard: ``d_ap < d_an < d_ap + margin`` in Euclidean distance."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def sample(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        """A random positive per anchor, then a random semi-hard negative for that pair (any negative if none)."""
        positive_mask, negative_mask = class_masks(labels)
        positives, has_positive = sample_columns(positive_mask.float())
        with torch.no_grad():
            distances = (squared_distances(embeddings.float()) + DISTANCE_EPS).sqrt()  # (B, B)
            positive_distance = distances.gather(1, positives[:, None])  # (B, 1)
            semihard = negative_mask & (distances > positive_distance) & (distances < positive_distance + self.margin)
            candidates = torch.where(semihard.any(1, keepdim=True), semihard, negative_mask)
        negatives, has_negative = sample_columns(candidates.float())
        anchors = torch.nonzero(has_positive & has_negative).squeeze(1)
        return Triplets(anchors, positives[anchors], negatives[anchors])

    def triplet_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets) -> torch.Tensor:
        if len(triplets.anchors) == 0:
            return zero_loss(embeddings)
        anchor, positive, negative = triplet_rows(embeddings, triplets)
        positive_sq = (anchor - positive).pow(2).sum(1)
        negative_sq = (anchor - negative).pow(2).sum(1)
        return F.relu(positive_sq - negative_sq + self.margin).mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.triplet_loss(embeddings, labels, self.sample(embeddings, labels))


def build_criterion(cfg, num_classes: int) -> nn.Module:
    """One base criterion with the paper's values, taken from the config."""
    if cfg.criterion == "multisimilarity":
        return MultiSimilarity(cfg.ms_pos_weight, cfg.ms_neg_weight, cfg.ms_threshold, cfg.ms_mining_margin)
    if cfg.criterion == "margin":
        return DistanceWeightedMargin(
            num_classes, cfg.margin, cfg.margin_beta, cfg.dw_lower_cutoff, cfg.dw_upper_cutoff
        )
    if cfg.criterion == "triplet":
        return SemihardTriplet(cfg.margin)
    raise ValueError(cfg.criterion)  # config validation lists the valid choices


# --- S2SD -----------------------------------------------------------------------------------------
def similarity_log_softmax(unit_rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise log-softmax of the (B, B) cosine similarities of unit rows, divided by T."""
    return F.log_softmax(unit_rows @ unit_rows.T / temperature, dim=1)


def kl_to_teacher(student_log_probs: torch.Tensor, teacher_unit_rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(T^2 / B) sum_i KL(softmax(S_t[i]/T) || softmax(S_s[i]/T))`` from the student's similarity log-softmax
    (:func:`similarity_log_softmax`) and the teacher's unit rows (B, D). The teacher side is detached: this term
    trains only the student."""
    teacher_log_probs = similarity_log_softmax(teacher_unit_rows.detach(), temperature)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    return kl * temperature**2 / student_log_probs.shape[0]


@dataclass
class LossParts:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # for logging, detached scalars


class S2SDLoss(nn.Module):
    """The S2SD objective around a base criterion, with one criterion instance per teacher.

    Computed in fp32 whatever the model ran in: under mixed precision, exp(40 s) of multisimilarity and
    the softmaxes of the similarity matrices overflow or lose precision in fp16.
    """

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
        with torch.autocast(output.embeddings.device.type, enabled=False):
            return self._loss(output.to_float32(), labels, step)

    def _loss(self, output: ModelOutput, labels: torch.Tensor, step: int) -> LossParts:
        student_loss = self.student_criterion(output.embeddings, labels)
        if not self.teacher_criteria:  # plain baseline
            return LossParts(student_loss, {"dml": student_loss.detach()})
        teacher_losses = torch.stack(
            [criterion(t, labels) for criterion, t in zip(self.teacher_criteria, output.teacher_embeddings)]
        )
        # Student and teacher embeddings have unit rows: the student's similarity softmax is computed once.
        student_log_probs = similarity_log_softmax(output.embeddings, self.temperature)
        distill = torch.stack(
            [kl_to_teacher(student_log_probs, t, self.temperature) for t in output.teacher_embeddings]
        )
        dml = 0.5 * (student_loss + teacher_losses.mean())
        distill_mean = distill.mean()
        total = dml + self.distill_weight * distill_mean
        parts = {"dml": dml.detach(), "distill": distill_mean.detach()}
        if self.feature_distill and step >= self.feature_delay:
            feature_kl = kl_to_teacher(student_log_probs, F.normalize(output.features, dim=-1), self.temperature)
            total = total + self.feature_weight * feature_kl
            parts["feature_distill"] = feature_kl.detach()
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
