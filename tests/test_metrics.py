"""Vectorised metrics against plain-Python references."""

from __future__ import annotations

import numpy as np
import pytest

from s2sd_deploy.metrics import evaluate_embeddings, map_at_r, nearest_neighbours, nmi, recall_at_k


def _data(n=60, d=8, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d))
    x = centres[labels] + 0.8 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def naive_ranking(x):
    sims = x @ x.T
    return [sorted((j for j in range(len(x)) if j != i), key=lambda j: -sims[i, j]) for i in range(len(x))]


def test_neighbours_exclude_self_and_follow_similarity():
    x, _ = _data()
    neighbours = nearest_neighbours(x, 5)
    assert neighbours.shape == (60, 5)
    assert not (neighbours == np.arange(60)[:, None]).any()
    ranking = naive_ranking(x)
    assert all(list(neighbours[i]) == ranking[i][:5] for i in range(60))


def test_recall_matches_naive_loop():
    x, labels = _data()
    ranking = naive_ranking(x)
    got = recall_at_k(labels[nearest_neighbours(x, 8)], labels, [1, 2, 4, 8])
    for k in (1, 2, 4, 8):
        expected = np.mean([any(labels[j] == labels[i] for j in ranking[i][:k]) for i in range(len(x))])
        assert got[k] == pytest.approx(expected)


def test_map_at_r_matches_naive_loop():
    x, labels = _data(seed=1)
    ranking = naive_ranking(x)
    aps = []
    for i in range(len(x)):
        r = int((labels == labels[i]).sum()) - 1
        hits = [labels[j] == labels[i] for j in ranking[i][:r]]
        aps.append(sum(np.mean(hits[: k + 1]) for k in range(r) if hits[k]) / r)
    neighbours = nearest_neighbours(x, int(np.bincount(labels).max()) - 1)
    assert map_at_r(labels[neighbours], labels) == pytest.approx(np.mean(aps))


def test_nmi_is_one_for_separated_clusters():
    labels = np.repeat(np.arange(4), 10)
    x = np.eye(4, dtype=np.float32)[labels] + 1e-3 * np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    assert nmi(x, labels) == pytest.approx(1.0)


def test_evaluate_embeddings_keys():
    x, labels = _data()
    result = evaluate_embeddings(x, labels, [1, 4])
    assert set(result) == {"recall@1", "recall@4", "nmi", "map@r"}
    assert all(0.0 <= v <= 1.0 for v in result.values())


def test_nmi_formula_equals_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score

    from s2sd_deploy.metrics import normalized_mutual_information

    rng = np.random.default_rng(0)
    for classes, clusters in ((5, 5), (12, 7), (3, 9)):
        labels, assigned = rng.integers(0, classes, 200), rng.integers(0, clusters, 200)
        assert normalized_mutual_information(labels, assigned) == pytest.approx(
            normalized_mutual_info_score(labels, assigned), abs=1e-12
        )
    assert normalized_mutual_information(np.arange(10) % 3, np.arange(10) % 3 + 7) == pytest.approx(1.0)


def test_query_gallery_metrics_match_naive_loops():
    from s2sd_deploy.metrics import evaluate_query_gallery

    gallery, gallery_labels = _data(n=50, seed=2)
    queries, query_labels = _data(n=20, seed=3)
    result = evaluate_query_gallery(queries, query_labels, gallery, gallery_labels, [1, 4])
    sims = queries @ gallery.T
    ranking = [list(np.argsort(-row, kind="stable")) for row in sims]
    for k in (1, 4):
        expected = np.mean([any(gallery_labels[j] == query_labels[i] for j in ranking[i][:k]) for i in range(20)])
        assert result[f"recall@{k}"] == pytest.approx(expected)
    aps = []
    for i in range(20):
        r = int((gallery_labels == query_labels[i]).sum())
        if r == 0:
            continue
        hits = [gallery_labels[j] == query_labels[i] for j in ranking[i][:r]]
        aps.append(sum(np.mean(hits[: k + 1]) for k in range(r) if hits[k]) / r)
    assert result["map@r"] == pytest.approx(np.mean(aps))


def test_items_alone_in_their_class_are_gallery_not_queries():
    """Recall@k of a query with nothing of its class to find is undefined: it is left out (and stays a distractor);
    the plain loop counts only the queries that have another item of their class."""
    x, labels = _data(n=40, seed=4)
    labels = labels.copy()
    labels[[3, 17, 29]] = [100, 101, 102]  # three singletons
    ranking = naive_ranking(x)
    result = evaluate_embeddings(x, labels, [1, 4])
    queries = [i for i in range(40) if (labels == labels[i]).sum() > 1]
    assert len(queries) == 37
    for k in (1, 4):
        expected = np.mean([any(labels[j] == labels[i] for j in ranking[i][:k]) for i in queries])
        assert result[f"recall@{k}"] == pytest.approx(expected)


def test_queries_of_classes_the_gallery_lacks_are_left_out():
    from s2sd_deploy.metrics import evaluate_query_gallery

    gallery, gallery_labels = _data(n=50, seed=2)
    queries, query_labels = _data(n=20, seed=3)
    query_labels = query_labels.copy()
    query_labels[:5] = 99  # not in the gallery
    result = evaluate_query_gallery(queries, query_labels, gallery, gallery_labels, [1])
    sims = queries @ gallery.T
    expected = np.mean([gallery_labels[np.argmax(sims[i])] == query_labels[i] for i in range(5, 20)])
    assert result["recall@1"] == pytest.approx(expected)
