"""The training objective and set-up against plain, loop-based implementations of the reference's semantics.

Each ``loop_*`` function below is written from the description of the reference implementation (SPEC.md and
issue 10), one anchor at a time, and the vectorised code must agree with it: losses to 1e-5, gradients with
cosine >= 0.99999, samplers in distribution.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s2sd_deploy.training.config import build_train_config
from s2sd_deploy.training.losses import (
    DistanceWeightedMargin,
    MultiSimilarity,
    SemihardTriplet,
    Triplets,
    build_criterion,
    build_loss,
)
from s2sd_deploy.training.model import EmbeddingModel, ModelOutput
from s2sd_deploy.training.optim import build_optimizer
from s2sd_deploy.training.sampler import ClassBatchSampler

LOSS_TOLERANCE = 1e-5
MIN_GRADIENT_COSINE = 0.99999


# --- plain loops ------------------------------------------------------------------------------------
def loop_multisimilarity(embeddings, labels, pos_weight=2.0, neg_weight=40.0, threshold=0.5, margin=0.1):
    """Per anchor: mine, then the two log-sum terms; mean over anchors that have mined pairs (0 if none)."""
    x = F.normalize(embeddings, dim=1)
    per_anchor = []
    for i in range(len(labels)):
        similarity = x @ x[i]  # (B,) this anchor's row
        is_positive = (labels == labels[i]) & (torch.arange(len(labels)) != i)
        is_negative = labels != labels[i]
        if not is_positive.any() or not is_negative.any():
            continue
        positive, negative = similarity[is_positive], similarity[is_negative]
        mined_negative = negative[negative + margin > positive.min()]
        mined_positive = positive[positive - margin < negative.max()]
        if len(mined_negative) == 0 or len(mined_positive) == 0:
            continue
        positive_term = torch.log(1 + torch.exp(-pos_weight * (mined_positive - threshold)).sum()) / pos_weight
        negative_term = torch.log(1 + torch.exp(neg_weight * (mined_negative - threshold)).sum()) / neg_weight
        per_anchor.append(positive_term + negative_term)
    if not per_anchor:
        return embeddings.sum() * 0, 0
    return sum(per_anchor) / len(per_anchor), len(per_anchor)


def loop_distance(a, b):
    return torch.sqrt(((a - b) ** 2).sum() + 1e-8)


def loop_margin(embeddings, labels, beta, triplets, margin=0.2):
    """sum(relu(d_ap - beta_y + m) + relu(beta_y - d_an + m)) / (#pos > 0 + #neg > 0), the plain sum if 0."""
    total, active = embeddings.sum() * 0, 0
    for a, p, n in zip(triplets.anchors.tolist(), triplets.positives.tolist(), triplets.negatives.tolist()):
        beta_y = beta[labels[a]]
        positive_term = F.relu(loop_distance(embeddings[a], embeddings[p]) - beta_y + margin)
        negative_term = F.relu(beta_y - loop_distance(embeddings[a], embeddings[n]) + margin)
        active += int(positive_term > 0) + int(negative_term > 0)
        total = total + positive_term + negative_term
    return total / active if active else total


def loop_negative_probabilities(embeddings, labels, anchor, lower=0.5, upper=None):
    """q(dist)^-1 = dist^(2-d) (1 - dist^2/4)^(-(d-3)/2) over other-class samples, normalised."""
    d = embeddings.shape[1]
    weights = []
    for j in range(len(labels)):
        distance = max(loop_distance(embeddings[anchor], embeddings[j]).item(), lower)
        allowed = labels[j] != labels[anchor] and (upper is None or distance < upper)
        log_weight = (2 - d) * math.log(distance) - (d - 3) / 2 * math.log(1 - distance**2 / 4)
        weights.append(log_weight if allowed else None)
    top = max(w for w in weights if w is not None)
    weights = [0.0 if w is None else math.exp(w - top) for w in weights]
    return np.array(weights) / sum(weights)


def loop_triplet(embeddings, triplets, margin=0.2):
    """mean over anchors of relu(|a - p|^2 - |a - n|^2 + margin)."""
    terms = [
        F.relu(((embeddings[a] - embeddings[p]) ** 2).sum() - ((embeddings[a] - embeddings[n]) ** 2).sum() + margin)
        for a, p, n in zip(triplets.anchors.tolist(), triplets.positives.tolist(), triplets.negatives.tolist())
    ]
    return sum(terms) / len(terms)


def loop_relational_kl(student, teacher, temperature=1.0):
    """(T^2 / B) sum_i KL(softmax(S_t[i] / T) || softmax(S_s[i] / T)), teacher detached, one row at a time."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)
    total = student.sum() * 0
    for i in range(len(s)):
        p = torch.softmax(t @ t[i] / temperature, dim=0)
        log_q = torch.log_softmax(s @ s[i] / temperature, dim=0)
        total = total + (p * (torch.log(p) - log_q)).sum()
    return temperature**2 / len(s) * total


def loop_s2sd(output, labels, criterion, feature_distill, step, delay, w=50.0, w_f=50.0, temperature=1.0):
    """L = 1/2 (L(e) + mean_k L_k(t_k)) + w mean_k KL_k [+ w_f KL_f once step >= delay]."""
    teachers = output.teacher_embeddings
    dml = 0.5 * (
        criterion(output.embeddings, 0) + sum(criterion(t, k + 1) for k, t in enumerate(teachers)) / len(teachers)
    )
    distill = sum(loop_relational_kl(output.embeddings, t, temperature) for t in teachers) / len(teachers)
    total = dml + w * distill
    if feature_distill and step >= delay:
        total = total + w_f * loop_relational_kl(output.embeddings, output.features, temperature)
    return total


# --- helpers --------------------------------------------------------------------------------------------
def leaf(tensor):
    return tensor.detach().clone().requires_grad_()


def unit_leaf(unit_rows, seed=0):
    """(raw leaf, its normalised rows): as in the model, a head's raw output is normalised before the loss,
    so gradients are compared at the raw output (scaled rows, to see the normalisation's Jacobian)."""
    scale = 0.5 + torch.rand(len(unit_rows), 1, generator=torch.Generator().manual_seed(seed))
    raw = leaf(unit_rows * scale)
    return raw, F.normalize(raw, dim=1)


def gradients(loss, tensors):
    return [
        g if g is not None else torch.zeros_like(t)
        for g, t in zip(torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True), tensors)
    ]


def assert_same_gradients(got, expected):
    for g, e in zip(got, expected):
        if e.abs().max() == 0:
            assert g.abs().max() == 0
        else:
            assert F.cosine_similarity(g.flatten(), e.flatten(), dim=0) >= MIN_GRADIENT_COSINE


def paired_labels(classes=56, per_class=2):
    return torch.arange(classes).repeat_interleave(per_class)  # the paper's batches: 56 classes x 2 = 112


def batch(kind: str, labels, dim=16, seed=0):
    """Unit embeddings whose multisimilarity mining leaves none / some / all anchors with pairs."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), dim, generator=generator)
    if kind == "all":
        return F.normalize(noise, dim=1)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=generator), dim=1)
    separated = F.normalize(torch.eye(dim)[labels % dim] * 10 + 0.01 * noise, dim=1)  # dim >= classes: orthogonal
    if kind == "none":
        return separated
    mixed = F.normalize(centres[labels] + 2.0 * noise, dim=1)
    return torch.where((labels % 2 == 0)[:, None], separated, mixed)


# --- 1. multisimilarity ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["none", "some", "all"])
def test_multisimilarity_averages_over_mined_anchors(kind):
    labels = paired_labels(16, 2) if kind != "all" else paired_labels()
    raw, embeddings = unit_leaf(batch(kind, labels, dim=32 if kind != "all" else 8))
    expected, mined = loop_multisimilarity(embeddings, labels)
    assert {"none": mined == 0, "some": 0 < mined < len(labels), "all": mined == len(labels)}[kind]
    got = MultiSimilarity()(embeddings, labels)
    assert got.item() == pytest.approx(expected.item(), abs=LOSS_TOLERANCE, rel=LOSS_TOLERANCE)
    got_gradients = gradients(got, [raw])
    assert_same_gradients(got_gradients, gradients(expected, [raw]))
    if kind == "none":
        assert got.item() == 0 and got_gradients[0].abs().max() == 0


@pytest.mark.parametrize("kind", ["some", "all"])
def test_multisimilarity_equals_the_library_with_an_avg_non_zero_reducer(kind):
    from pytorch_metric_learning import losses, miners, reducers

    labels = paired_labels(16, 2)
    raw, embeddings = unit_leaf(batch(kind, labels, dim=32))
    library = losses.MultiSimilarityLoss(alpha=2, beta=40, base=0.5, reducer=reducers.AvgNonZeroReducer())
    expected = library(embeddings, labels, miners.MultiSimilarityMiner(epsilon=0.1)(embeddings, labels))
    got = MultiSimilarity()(embeddings, labels)
    assert got.item() == pytest.approx(expected.item(), rel=LOSS_TOLERANCE)
    assert_same_gradients(gradients(got, [raw]), gradients(expected, [raw]))


def test_multisimilarity_mean_is_not_over_the_whole_batch():
    labels = paired_labels(16, 2)
    embeddings = batch("some", labels, dim=32)
    loss, mined = loop_multisimilarity(embeddings, labels)
    whole_batch_mean = loss.item() * mined / len(labels)  # what a mean over all B anchors gives
    assert MultiSimilarity()(embeddings, labels).item() == pytest.approx(loss.item(), rel=1e-5)
    assert MultiSimilarity()(embeddings, labels).item() > whole_batch_mean * 1.5


# --- 2. margin with distance-weighted sampling -----------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_margin_loss_on_fixed_triplets(seed):
    labels = paired_labels()
    generator = torch.Generator().manual_seed(seed)
    embeddings = leaf(F.normalize(torch.randn(len(labels), 128, generator=generator), dim=1))
    criterion = DistanceWeightedMargin(num_classes=56)
    with torch.no_grad():
        criterion.beta.copy_(1.2 + 0.1 * torch.randn(56, generator=generator))
    torch.manual_seed(seed)
    triplets = criterion.sample(embeddings, labels)
    assert len(triplets.anchors) == len(labels)  # exactly one triplet per anchor
    got = criterion.triplet_loss(embeddings, labels, triplets)
    expected = loop_margin(embeddings, labels, criterion.beta, triplets)
    assert got.item() == pytest.approx(expected.item(), rel=LOSS_TOLERANCE)
    tensors = [embeddings, criterion.beta]
    assert_same_gradients(gradients(got, tensors), gradients(expected, tensors))


def test_margin_loss_is_the_plain_sum_when_no_term_is_positive():
    labels = torch.tensor([0, 0, 1, 1])
    embeddings = leaf(torch.tensor([[1.0, 0], [1.0, 0], [-1.0, 0], [-1.0, 0]]))  # d_ap ~ 0, d_an = 2
    criterion = DistanceWeightedMargin(num_classes=2, beta=0.5)  # 0 - 0.5 + 0.2 < 0 and 0.5 - 2 + 0.2 < 0
    triplets = Triplets(torch.tensor([0, 2]), torch.tensor([1, 3]), torch.tensor([2, 0]))
    loss = criterion.triplet_loss(embeddings, labels, triplets)
    assert loss.item() == 0 and loop_margin(embeddings, labels, criterion.beta, triplets).item() == 0


def _draw_negatives(criterion, embeddings, labels, draws):
    counts = np.zeros((len(labels), len(labels)))
    positive_counts = np.zeros((len(labels), len(labels)))
    torch.manual_seed(0)
    for _ in range(draws):
        t = criterion.sample(embeddings, labels)
        np.add.at(counts, (t.anchors.numpy(), t.negatives.numpy()), 1)
        np.add.at(positive_counts, (t.anchors.numpy(), t.positives.numpy()), 1)
    return counts / draws, positive_counts / draws


@pytest.mark.parametrize("dim", [4, 16])
def test_distance_weighted_sampler_follows_the_inverse_sphere_density(dim):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    embeddings = F.normalize(torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(dim)), dim=1)
    empirical, positives = _draw_negatives(DistanceWeightedMargin(num_classes=4), embeddings, labels, 6000)
    for anchor in range(len(labels)):
        expected = loop_negative_probabilities(embeddings, labels, anchor)
        assert np.abs(empirical[anchor] - expected).max() < 0.03  # 6000 draws: standard error <= 0.0065
        same = (labels == labels[anchor]).numpy() & (np.arange(len(labels)) != anchor)
        np.testing.assert_allclose(positives[anchor][same], 1 / same.sum(), atol=0.03)  # a random positive
        assert (
            positives[anchor][~same].sum() == 0
            and empirical[anchor][labels.numpy() == labels[anchor].item()].sum() == 0
        )


def test_no_upper_cutoff_by_default_and_the_option_applies_it():
    labels = torch.tensor([0, 0, 1, 2])
    embeddings = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.436, 0, 0], [-0.95, 0.31, 0, 0], [0.6, 0.8, 0, 0]])
    embeddings = F.normalize(embeddings, dim=1)  # anchor 0: sample 2 at distance 1.97 (> 1.4), sample 3 at 0.89
    default, _ = _draw_negatives(DistanceWeightedMargin(num_classes=3), embeddings, labels, 3000)
    expected = loop_negative_probabilities(embeddings, labels, 0)
    assert expected[2] > 0.05 and abs(default[0, 2] - expected[2]) < 0.03  # far negatives are drawn
    cut, _ = _draw_negatives(DistanceWeightedMargin(num_classes=3, upper_cutoff=1.4), embeddings, labels, 300)
    assert cut[0, 2] == 0 and cut[0, 3] == 1
    assert build_criterion(build_train_config({"criterion": "margin"}), 3).upper_cutoff is None


# --- 3. triplet with semi-hard mining ----------------------------------------------------------------
def test_triplet_loss_and_semihard_sampling():
    labels = paired_labels(8, 4)
    embeddings = leaf(F.normalize(torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(3)), dim=1))
    criterion = SemihardTriplet(margin=0.2)
    distance = torch.cdist(embeddings.detach(), embeddings.detach())
    torch.manual_seed(0)
    for _ in range(50):
        t = criterion.sample(embeddings, labels)
        assert len(t.anchors) == len(labels)
        for a, p, n in zip(t.anchors.tolist(), t.positives.tolist(), t.negatives.tolist()):
            assert labels[p] == labels[a] and p != a and labels[n] != labels[a]
            others = [j for j in range(len(labels)) if labels[j] != labels[a]]
            semihard = [j for j in others if distance[a, p] < distance[a, j] < distance[a, p] + 0.2]
            assert n in (semihard or others)
    got = criterion.triplet_loss(embeddings, labels, t)
    expected = loop_triplet(embeddings, t)
    assert got.item() == pytest.approx(expected.item(), rel=LOSS_TOLERANCE)
    assert_same_gradients(gradients(got, [embeddings]), gradients(expected, [embeddings]))


def test_semihard_negative_is_uniform_among_the_semihard():
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    x = torch.tensor([[1.0, 0], [0.96, 0.28], [0.9, 0.436], [0.85, 0.527], [0.8, 0.6], [-1.0, 0]])
    embeddings = F.normalize(x, dim=1)  # anchor 0: positive at 0.28, negatives at 0.45, 0.55, 0.63, 2.0
    counts = np.zeros(6)
    torch.manual_seed(0)
    for _ in range(3000):
        t = SemihardTriplet(margin=0.2).sample(embeddings, labels)
        counts[t.negatives[t.anchors == 0].item()] += 1
    distance = torch.cdist(embeddings, embeddings)[0]
    semihard = [j for j in range(2, 6) if distance[1] < distance[j] < distance[1] + 0.2]
    assert semihard and counts[[j for j in range(2, 6) if j not in semihard]].sum() == 0
    np.testing.assert_allclose(counts[semihard] / 3000, 1 / len(semihard), atol=0.03)


# --- the S2SD objective, every variant, before and after the feature delay ----------------------------
def _s2sd_output(labels, dims=(512, 1024, 1536, 2048), seed=0):
    """A model output (unit student and teacher rows, raw features) and the raw leaves behind it."""
    generator = torch.Generator().manual_seed(seed)
    raw_student, embeddings = unit_leaf(batch("some", labels, dim=128, seed=seed), seed)
    teacher_leaves = [
        unit_leaf(F.normalize(torch.randn(len(labels), d, generator=generator), dim=1), seed + k)
        for k, d in enumerate(dims)
    ]
    features = leaf(torch.randn(len(labels), 2048, generator=generator).relu())
    output = ModelOutput(embeddings, [unit for _, unit in teacher_leaves], features)
    return output, [raw_student, *[raw for raw, _ in teacher_leaves], features]


@pytest.mark.parametrize("variant", ["dsd", "msd", "msdf", "msdfa"])
@pytest.mark.parametrize("step", [999, 1000])
def test_s2sd_multisimilarity_equals_the_loop(variant, step):
    cfg = build_train_config({"dataset": "cub200", "data_root": "/data", "variant": variant})
    labels = paired_labels()
    output, tensors = _s2sd_output(labels, cfg.target_dims)
    loss = build_loss(cfg, num_classes=56)
    got = loss(output, labels, step).total
    expected = loop_s2sd(
        output, labels, lambda e, head: loop_multisimilarity(e, labels)[0], cfg.feature_distill, step, cfg.feature_delay
    )
    assert got.item() == pytest.approx(expected.item(), rel=LOSS_TOLERANCE)
    assert_same_gradients(gradients(got, tensors), gradients(expected, tensors))


@pytest.mark.parametrize("variant", ["dsd", "msdf"])
def test_s2sd_margin_equals_the_loop_on_the_same_triplets(variant, monkeypatch):
    cfg = build_train_config({"dataset": "cub200", "data_root": "/data", "variant": variant, "criterion": "margin"})
    labels = paired_labels()
    output, leaves = _s2sd_output(labels, cfg.target_dims, seed=1)
    loss = build_loss(cfg, num_classes=56)
    sampled = []  # the triplets each head's criterion drew, in call order: student, then teachers
    original = DistanceWeightedMargin.sample
    monkeypatch.setattr(
        DistanceWeightedMargin, "sample", lambda self, e, y: sampled.append(original(self, e, y)) or sampled[-1]
    )
    got = loss(output, labels, step=1000).total
    criteria = [loss.student_criterion, *loss.teacher_criteria]
    expected = loop_s2sd(
        output,
        labels,
        lambda e, head: loop_margin(e, labels, criteria[head].beta, sampled[head]),
        cfg.feature_distill,
        1000,
        cfg.feature_delay,
    )
    assert got.item() == pytest.approx(expected.item(), rel=LOSS_TOLERANCE)
    tensors = [*leaves, *[c.beta for c in criteria]]
    assert_same_gradients(gradients(got, tensors), gradients(expected, tensors))


def test_pool_aggregation_feeds_teachers_avg_plus_max():
    torch.manual_seed(0)
    model = EmbeddingModel(torch.nn.Conv2d(3, 6, 3), 6, 4, target_dims=[8], pool_aggregation=True).eval()
    images = torch.randn(3, 3, 7, 7)
    feature_map = model.backbone(images)
    expected = torch.tensor(
        [[feature_map[b, c].mean().item() + feature_map[b, c].max().item() for c in range(6)] for b in range(3)]
    )
    torch.testing.assert_close(model(images).features, expected, rtol=1e-5, atol=1e-6)


def test_loss_runs_in_fp32_under_mixed_precision():
    cfg = build_train_config({"dataset": "cub200", "data_root": "/data", "variant": "msdf", "feature_delay": 0})
    labels = paired_labels()
    full, _ = _s2sd_output(labels, cfg.target_dims)
    half = ModelOutput(
        full.embeddings.bfloat16(), [t.bfloat16() for t in full.teacher_embeddings], full.features.bfloat16()
    )
    loss = build_loss(cfg, 56)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what a mixed-precision forward hands the loss
        got = loss(half, labels, step=0).total
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(loss(half.to_float32(), labels, step=0).total.item(), rel=1e-6)


# --- 4. parameter groups --------------------------------------------------------------------------------
@pytest.mark.parametrize("s2sd,criterion_lr", [(False, 5e-4), (True, 1e-5)])
def test_optimizer_groups_follow_the_reference(s2sd, criterion_lr):
    cfg = build_train_config(
        {
            "dataset": "cub200",
            "data_root": "/data",
            "backbone": "resnet18",
            "criterion": "margin",
            "s2sd": s2sd,
            "target_dims": [16, 32],
        }
    )
    model = EmbeddingModel(torch.nn.Conv2d(3, 8, 3), 8, 4, target_dims=cfg.target_dims if s2sd else [])
    loss = build_loss(cfg, num_classes=5)
    groups = {g["name"]: g for g in build_optimizer(cfg, model, loss).param_groups}
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["network"]["params"]) == ids([*model.backbone.parameters(), *model.student.parameters()])
    assert (groups["network"]["lr"], groups["network"]["weight_decay"]) == (1e-5, 4e-4)
    assert ids(groups["criterion"]["params"]) == ids(loss.parameters())
    assert (groups["criterion"]["lr"], groups["criterion"]["weight_decay"]) == (criterion_lr, 0.0)
    if s2sd:
        assert ids(groups["teachers"]["params"]) == ids(model.teachers.parameters())
        assert (groups["teachers"]["lr"], groups["teachers"]["weight_decay"]) == (1e-5, 0.0)
    else:
        assert "teachers" not in groups
    explicit = build_train_config(
        {"s2sd": s2sd, "criterion": "margin", "criterion_lr": 3e-3, "teacher_weight_decay": 1e-4}
    )
    groups = {g["name"]: g for g in build_optimizer(explicit, model, build_loss(explicit, 5)).param_groups}
    assert groups["criterion"]["lr"] == 3e-3
    if s2sd:
        assert groups["teachers"]["weight_decay"] == 1e-4


# --- 5. mixed precision is off by default -----------------------------------------------------------------
def test_fp32_by_default():
    assert build_train_config({"dataset": "cub200", "data_root": "/data"}).amp is False


# --- 6. the batch sampler ----------------------------------------------------------------------------------
def loop_distinct_classes_expected(num_classes: int, draws: int) -> float:
    """E[#distinct classes] when drawing ``draws`` of ``num_classes`` uniformly with replacement."""
    return num_classes * (1 - (1 - 1 / num_classes) ** draws)


def test_default_sampler_draws_classes_and_images_with_replacement():
    labels = np.repeat(np.arange(100), 59)  # CUB-like: 100 training classes of ~59 images
    cfg = build_train_config({"dataset": "cub200", "data_root": "/data"})
    assert cfg.sampler == "replacement"
    sampler = ClassBatchSampler(labels, cfg.classes_per_batch, cfg.samples_per_class, seed=0)
    batches = [list(sampler)]
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        batches.append(list(sampler))
    flat = [b for epoch in batches for b in epoch]
    assert len(batches[0]) == len(labels) // 112 and all(len(b) == 112 for b in flat)
    distinct = [len(set(labels[b])) for b in flat]
    assert abs(np.mean(distinct) - loop_distinct_classes_expected(100, 56)) < 0.6  # ~43 of 56 draws
    per_class_max = [np.bincount(labels[b]).max() for b in flat]
    assert max(per_class_max) >= 4 and min(np.bincount(labels[flat[0]])[labels[flat[0]]]) >= 2
    repeated_image = [len(set(b)) < 112 for b in flat]
    assert any(repeated_image)  # a class's images are drawn with replacement too
    again = ClassBatchSampler(labels, 56, 2, seed=0)
    assert list(again) == batches[0]


def test_sampler_images_are_uniform_within_a_class():
    labels = np.array([0] * 3 + [1] * 5)
    sampler = ClassBatchSampler(labels, classes_per_batch=2, samples_per_class=2, seed=0)
    counts = np.zeros(8)
    for epoch in range(1500):
        sampler.set_epoch(epoch)
        for b in sampler:
            np.add.at(counts, b, 1)
    total = counts.sum()
    np.testing.assert_allclose(counts[:3] / total, 0.5 / 3, atol=0.01)  # each class drawn half the time
    np.testing.assert_allclose(counts[3:] / total, 0.5 / 5, atol=0.01)
