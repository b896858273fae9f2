"""The S2SD loss against SPEC.md's formula evaluated by hand on a small batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from s2sd_deploy.training.config import build_train_config
from s2sd_deploy.training.losses import S2SDLoss, build_criterion, build_loss, kl_to_teacher, similarity_log_softmax
from s2sd_deploy.training.model import ModelOutput


def relational_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """The library's relational KL of two raw embedding sets (rows normalised first)."""
    student_log_probs = similarity_log_softmax(F.normalize(student, dim=-1), temperature)
    return kl_to_teacher(student_log_probs, F.normalize(teacher, dim=-1), temperature)


def naive_relational_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """(T^2 / B) * sum_i KL(softmax(S_t[i] / T) || softmax(S_s[i] / T)), one element at a time."""
    s = F.normalize(student, dim=-1).tolist()
    t = F.normalize(teacher, dim=-1).tolist()
    batch = len(s)

    def softmax_row(rows, i):
        logits = [sum(a * b for a, b in zip(rows[i], rows[j])) / temperature for j in range(batch)]
        top = max(logits)
        exps = [math.exp(v - top) for v in logits]
        return [e / sum(exps) for e in exps]

    total = 0.0
    for i in range(batch):
        p, q = softmax_row(t, i), softmax_row(s, i)  # p: teacher, q: student
        total += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q))
    return temperature**2 / batch * total


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_relational_kl_matches_formula(temperature):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=generator), torch.randn(6, 9, generator=generator)
    expected = naive_relational_kl(student, teacher, temperature)
    assert relational_kl(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_relational_kl_direction_is_teacher_to_student():
    generator = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    # KL is asymmetric: swapping the roles must change the value, and ours must match KL(teacher || student).
    assert relational_kl(a, b, 1.0).item() == pytest.approx(naive_relational_kl(a, b, 1.0), rel=1e-5)
    assert relational_kl(a, b, 1.0).item() != pytest.approx(relational_kl(b, a, 1.0).item(), rel=1e-3)


def test_relational_kl_is_zero_for_identical_similarities():
    x = torch.randn(7, 5)
    assert relational_kl(x, x.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_no_gradient_reaches_teacher_through_distillation():
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(6, 8, requires_grad=True)
    relational_kl(student, teacher, 1.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


class ZeroCriterion(torch.nn.Module):
    """A criterion with no gradient of its own, so only the distillation terms remain."""

    def forward(self, embeddings, labels):
        return embeddings.sum() * 0.0


def _output(batch=8, dim=4, teacher_dims=(8, 16), feature_dim=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    embeddings = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).requires_grad_()
    teachers = [F.normalize(torch.randn(batch, d, generator=generator), dim=-1).requires_grad_() for d in teacher_dims]
    features = torch.randn(batch, feature_dim, generator=generator).requires_grad_()
    return ModelOutput(embeddings, teachers, features)


def test_teacher_gradient_comes_only_from_its_own_criterion():
    output = _output()
    loss = S2SDLoss(ZeroCriterion, num_teachers=2, distill_weight=50.0, feature_distill=True, feature_delay=0)
    loss(output, torch.arange(8) % 4, step=5).total.backward()
    for teacher in output.teacher_embeddings:
        assert teacher.grad is None or teacher.grad.abs().max() == 0
    assert output.features.grad is None or output.features.grad.abs().max() == 0
    assert output.embeddings.grad.abs().sum() > 0


def test_total_loss_matches_spec_formula():
    cfg = build_train_config({"criterion": "multisimilarity"})
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    output = _output(seed=3)
    loss = S2SDLoss(
        lambda: build_criterion(cfg, 4),
        num_teachers=2,
        distill_weight=50.0,
        temperature=1.0,
        feature_distill=True,
        feature_weight=7.0,
        feature_delay=10,
    )
    criterion = build_criterion(cfg, 4)
    dml = 0.5 * (
        criterion(output.embeddings, labels)
        + (criterion(output.teacher_embeddings[0], labels) + criterion(output.teacher_embeddings[1], labels)) / 2
    )
    distill = sum(naive_relational_kl(output.embeddings, t, 1.0) for t in output.teacher_embeddings) / 2
    expected_before = dml.item() + 50.0 * distill
    expected_after = expected_before + 7.0 * naive_relational_kl(output.embeddings, output.features, 1.0)
    assert loss(output, labels, step=9).total.item() == pytest.approx(expected_before, rel=1e-5)
    assert loss(output, labels, step=10).total.item() == pytest.approx(expected_after, rel=1e-5)


def test_feature_distillation_starts_exactly_at_delay():
    loss = S2SDLoss(ZeroCriterion, num_teachers=1, feature_distill=True, feature_delay=1000)
    output, labels = _output(teacher_dims=(8,)), torch.arange(8) % 4
    assert "feature_distill" not in loss(output, labels, step=999).parts
    assert "feature_distill" in loss(output, labels, step=1000).parts
    off = S2SDLoss(ZeroCriterion, num_teachers=1, feature_distill=False, feature_delay=0)
    assert "feature_distill" not in off(output, labels, step=10_000).parts


def test_each_teacher_has_its_own_criterion_instance():
    cfg = build_train_config({"criterion": "margin"})
    loss = build_loss(cfg, num_classes=5)
    betas = [c.beta for c in [loss.student_criterion, *loss.teacher_criteria]]
    assert len(betas) == 5 and len({id(b) for b in betas}) == 5
    assert all(b.shape == (5,) and torch.allclose(b, torch.full((5,), 1.2)) for b in betas)


def test_baseline_has_no_teachers_and_is_the_plain_criterion():
    cfg = build_train_config({"s2sd": False})
    loss = build_loss(cfg, num_classes=4)
    output, labels = _output(), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    plain = build_criterion(cfg, 4)(output.embeddings, labels)
    assert len(loss.teacher_criteria) == 0
    assert loss(output, labels, step=0).total.item() == pytest.approx(plain.item())


def test_criteria_use_spec_values_not_library_defaults():
    cfg = build_train_config({})
    ms = build_criterion(cfg, 4)
    assert (ms.pos_weight, ms.neg_weight, ms.threshold, ms.mining_margin) == (2.0, 40.0, 0.5, 0.1)
    margin = build_criterion(build_train_config({"criterion": "margin"}), 4)
    assert margin.margin == 0.2 and torch.equal(margin.beta.detach(), torch.full((4,), 1.2))
    assert (margin.lower_cutoff, margin.upper_cutoff) == (0.5, None)  # the reference's: no upper cut-off
