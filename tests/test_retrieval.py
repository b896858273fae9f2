"""Exact kernels against faiss IndexFlatIP, approximate indexes, recall and the cascade."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2sd_deploy.bench.kernels import (
    EXACT_KERNELS,
    Cascade,
    ExactSearch,
    build_approximate,
    exact_kernels,
    grouped_topk_torch,
)
from s2sd_deploy.metrics import recall_against_exact
from s2sd_deploy.serving.knn import group_size, grouped_topk, inner_products_by_id


def unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "n,k,group",
    [
        (1000, 10, None),
        (1000, 1, None),
        (1003, 7, None),
        (300, 10, None),
        (129, 5, None),
        (20_000, 100, None),
        (5000, 50, 16),
        (5000, 3, 512),
    ],
)
def test_grouped_topk_equals_topk(n, k, group):
    scores = torch.randn(6, n)
    values, ids = grouped_topk_torch(scores, k, group)
    expected_values, expected_ids = torch.topk(scores, k, dim=1)
    assert torch.equal(values, expected_values) and torch.equal(ids, expected_ids)
    values, ids = grouped_topk(scores.numpy(), k, group)
    np.testing.assert_array_equal(values, expected_values.numpy())
    np.testing.assert_array_equal(ids, expected_ids.numpy())


def test_group_size_balances_the_two_stages():
    assert group_size(100_000, 10) == 32 and group_size(100_000, 50) == 16 and group_size(100_000, 100) == 8
    assert group_size(1000, 1000) == 8 and group_size(10**9, 1) == 512  # clipped


def test_numpy_kernel_is_cpu_only():
    assert "numpy-grouped" in exact_kernels("cpu") and "numpy-grouped" not in exact_kernels("gpu")
    with pytest.raises(ValueError, match="on gpu"):
        ExactSearch(unit(10, 4), "numpy-grouped", device="gpu")


@pytest.mark.parametrize("kernel", EXACT_KERNELS)
def test_exact_kernels_return_faiss_neighbours(kernel):
    gallery, queries = unit(5000, 32), unit(9, 32, seed=1)
    expected = ExactSearch(gallery, "faiss-flat").search(queries, 10)
    got = ExactSearch(gallery, kernel).search(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_allclose(got[0], expected[0], atol=1e-5)


def test_recall_against_exact():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_against_exact(exact, exact, 3) == 1.0
    assert recall_against_exact(np.array([[3, 9, 1], [7, 8, 9]]), exact, 3) == pytest.approx(2 / 6)


@pytest.mark.parametrize("kind,floor", [("hnsw", 0.9), ("ivfpq", 0.1)])  # random guessing: 0.0005
def test_approximate_indexes_find_exact_neighbours(kind, floor):
    # Clustered, like real embeddings: uniform random vectors are the worst case for quantisation.
    rng = np.random.default_rng(2)
    centres = unit(200, 32, seed=3)
    points = centres[rng.integers(0, 200, 20_050)] + 0.05 * rng.standard_normal((20_050, 32)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    gallery, queries = points[:20_000], points[20_000:]
    exact = ExactSearch(gallery).search(queries, 10)[1]
    index = build_approximate(kind, gallery)
    assert index.nbytes > 0
    assert recall_against_exact(index.search(queries, 10)[1], exact, 10) > floor


def test_cascade_reranks_shortlist_by_teacher():
    student_gallery, teacher_gallery = unit(500, 8), unit(500, 64, seed=3)
    student_queries, teacher_queries = unit(4, 8, seed=4), unit(4, 64, seed=5)
    ids = Cascade(ExactSearch(student_gallery), teacher_gallery).search(student_queries, teacher_queries, 50, 5)
    for q in range(4):  # naive: the 50 student neighbours sorted by teacher score
        shortlist = np.argsort(-(student_gallery @ student_queries[q]))[:50]
        expected = shortlist[np.argsort(-(teacher_gallery[shortlist] @ teacher_queries[q]))][:5]
        np.testing.assert_array_equal(ids[q], expected)


def test_cascade_with_full_shortlist_equals_teacher_search():
    student_gallery, teacher_gallery = unit(200, 8), unit(200, 64, seed=6)
    cascade = Cascade(ExactSearch(student_gallery, "numpy-grouped"), teacher_gallery)
    ids = cascade.search(student_gallery, teacher_gallery, 199, 3, exclude_self=True)
    expected = ExactSearch(teacher_gallery).search(teacher_gallery, 4)[1][:, 1:]
    np.testing.assert_array_equal(ids, expected)


def test_cascade_teacher_scores_are_inner_products_of_the_candidates():
    teacher_gallery, queries = unit(300, 16, seed=7), unit(9, 16, seed=8)
    candidates = np.random.default_rng(9).integers(0, 300, (9, 20))
    expected = np.einsum("qkd,qd->qk", teacher_gallery[candidates], queries)
    np.testing.assert_allclose(
        inner_products_by_id(teacher_gallery, queries, candidates), expected, rtol=1e-5, atol=1e-6
    )
