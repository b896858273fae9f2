"""The Milvus gallery backend against Milvus Lite: round trip, exact search, teacher fetch, re-rank, paths, errors."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from s2sd_deploy.errors import MissingDependencyError, S2SDError  # noqa: E402
from s2sd_deploy.serving.milvus import MilvusGallery  # noqa: E402

N, STUDENT_DIM, TEACHER_DIM = 2_000, 16, 64
METADATA = {"run_id": "tiny-run", "student_dim": STUDENT_DIM, "teacher_dim": TEACHER_DIM, "note": "ünïcödé"}


def unit_vectors(rng, n: int, d: int) -> np.ndarray:
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def image_paths(ids: np.ndarray) -> list[str]:
    return [f"gallery/猫_{i}/bild-{int(i):05d}-ß.jpg" for i in ids]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return {
        "ids": np.arange(10_000, 10_000 + N, dtype=np.int64),  # not 0..N-1: ids are the caller's, not row numbers
        "student": unit_vectors(rng, N, STUDENT_DIM),
        "teacher": unit_vectors(rng, N, TEACHER_DIM),
        "queries": unit_vectors(rng, 24, STUDENT_DIM),
        "teacher_queries": unit_vectors(rng, 24, TEACHER_DIM),
    }


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """A Milvus Lite file; the module is skipped when Milvus Lite cannot start here."""
    path = str(tmp_path_factory.mktemp("milvus") / "gallery.db")
    try:
        MilvusGallery.create(path, "probe", STUDENT_DIM, None, {}).close()
    except S2SDError as error:
        pytest.skip(f"Milvus Lite cannot start here: {error}")
    return path


@pytest.fixture(scope="module")
def gallery(uri, data):
    gallery = MilvusGallery.create(uri, "gallery", STUDENT_DIM, TEACHER_DIM, METADATA)
    gallery.add(data["ids"], data["student"], data["teacher"], image_paths(data["ids"]))
    yield gallery
    gallery.close()


def exact_top_k(data, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the exact inner-product search, best first."""
    scores = queries @ data["student"].T
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), data["ids"][order]


def test_round_trip(gallery, uri):
    assert gallery.count() == N
    assert gallery.metadata() == METADATA
    assert (gallery.student_dim, gallery.teacher_dim, gallery.index_type) == (STUDENT_DIM, TEACHER_DIM, "FLAT")
    with MilvusGallery.open(uri, "gallery") as reopened:
        assert reopened.count() == N
        assert reopened.metadata() == METADATA
        assert (reopened.student_dim, reopened.teacher_dim) == (STUDENT_DIM, TEACHER_DIM)


def test_search_matches_exact_inner_product(gallery, data):
    queries = np.concatenate([data["queries"], data["student"][:8]])
    scores, ids = gallery.search(queries, 10)
    exact_scores, exact_ids = exact_top_k(data, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (len(queries), 10)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-4)
    true_scores = np.einsum("qkd,qd->qk", data["student"][np.searchsorted(data["ids"], ids)], queries)
    np.testing.assert_allclose(scores, true_scores, atol=1e-4)  # each id carries its own score
    differs = ids != exact_ids
    assert np.all(np.abs(true_scores[differs] - exact_scores[differs]) <= 1e-5), "order differs beyond ties"
    assert np.array_equal(ids[-8:, 0], data["ids"][:8])  # a gallery vector finds itself first


def test_search_pads_when_k_exceeds_count(gallery, data):
    scores, ids = gallery.search(data["queries"][:3], N + 7)
    assert ids.shape == (3, N + 7)
    assert np.all(ids[:, N:] == -1) and np.all(np.isneginf(scores[:, N:]))
    assert all(set(row[:N]) == set(data["ids"]) for row in ids)
    assert np.all(np.diff(scores[:, :N], axis=1) <= 1e-6)  # best first


def test_teacher_vectors_are_the_stored_rows_in_order(gallery, data):
    _, ids = gallery.search(data["queries"][:5], 12)
    ids[0, 3:] = -1
    ids[2, -1] = -1
    ids[4] = ids[1]  # duplicates across queries are fetched once and scattered to both
    vectors = gallery.teacher_vectors(ids)
    row_of = np.searchsorted(data["ids"], np.where(ids < 0, data["ids"][0], ids))
    expected = np.where((ids >= 0)[..., None], data["teacher"][row_of], 0.0).astype(np.float32)
    assert vectors.dtype == np.float32 and vectors.shape == (5, 12, TEACHER_DIM)
    np.testing.assert_array_equal(vectors, expected)
    assert gallery.teacher_vectors(np.full((2, 3), -1)).shape == (2, 3, TEACHER_DIM)


def test_searcher_rerank_from_milvus_equals_a_naive_loop(gallery, data, uri, tmp_path):
    from s2sd_deploy.serving.index_dir import IndexDir
    from s2sd_deploy.serving.search import Searcher

    model = {"embedding_dim": STUDENT_DIM, "teacher_dim": TEACHER_DIM}
    backend = {"name": "milvus", "uri": uri, "collection": "gallery"}
    IndexDir(tmp_path).write_manifest({"model": model, "backend": backend})
    searcher = Searcher(tmp_path)
    queries, teacher_queries = data["queries"], data["teacher_queries"]
    result = searcher.search_embeddings(queries, teacher_queries, k=10, rerank=50)
    searcher.store.close()

    teacher_of = dict(zip(data["ids"].tolist(), data["teacher"]))
    _, shortlists = gallery.search(queries, 50)
    for q, candidates in enumerate(shortlists):
        score = {i: float(teacher_of[i] @ teacher_queries[q]) for i in candidates.tolist()}
        naive = sorted(score, key=lambda i: -score[i])[:10]
        assert result.ids[q].tolist() == naive
        np.testing.assert_allclose(result.scores[q], [score[i] for i in naive], rtol=1e-5)


def test_paths_map_ids_to_stored_strings(gallery, data):
    ids = np.array([[data["ids"][0], -1], [data["ids"][-1], data["ids"][5]]])
    expected = np.array([[image_paths(ids[0, :1])[0], ""], image_paths(ids[1])])
    assert np.array_equal(gallery.paths(ids), expected)
    assert gallery.paths(np.array([-1, -1])).tolist() == ["", ""]
    assert gallery.paths(np.array(data["ids"][3])).tolist() == image_paths(data["ids"][3:4])[0]


def test_unknown_ids_are_an_error(gallery):
    with pytest.raises(S2SDError, match="1 ids are not in Milvus collection 'gallery'.*: 5"):
        gallery.paths(np.array([5]))


NEW = 100_000  # ids not yet in the gallery
BAD_ADDS = {
    "student dim": (lambda d: (d["ids"][:4] + NEW, d["student"][:4, :8], d["teacher"][:4]), r"student.*\(4, 16\)"),
    "teacher dim": (lambda d: (d["ids"][:4] + NEW, d["student"][:4], d["teacher"][:4, :32]), r"teacher.*\(4, 64\)"),
    "lengths": (lambda d: (d["ids"][:4] + NEW, d["student"][:3], d["teacher"][:4]), r"student.*\(4, 16\)"),
    "no teacher": (lambda d: (d["ids"][:4] + NEW, d["student"][:4], None), "stores teacher vectors"),
    "negative ids": (lambda d: (-d["ids"][:4], d["student"][:4], d["teacher"][:4]), "non-negative"),
    "repeated ids": (lambda d: (d["ids"][[0, 0, 1, 2]] + NEW, d["student"][:4], d["teacher"][:4]), "distinct"),
    "float ids": (lambda d: (d["ids"][:4] + NEW + 0.5, d["student"][:4], d["teacher"][:4]), "integer"),
}


@pytest.mark.parametrize("problem", BAD_ADDS)
def test_bad_adds_are_refused_before_writing(gallery, data, problem):
    make, message = BAD_ADDS[problem]
    ids, student, teacher = make(data)
    with pytest.raises(S2SDError, match=message):
        gallery.add(ids, student, teacher, image_paths(ids))
    assert gallery.count() == N


def test_bad_paths_and_queries_are_refused(gallery, data):
    ids = data["ids"][:4] + NEW
    with pytest.raises(S2SDError, match="got 3 paths for 4 ids"):
        gallery.add(ids, data["student"][:4], data["teacher"][:4], image_paths(ids)[:3])
    with pytest.raises(S2SDError, match="exceed 4096 UTF-8 bytes"):
        gallery.add(ids, data["student"][:4], data["teacher"][:4], ["ß" * 2049] * 4)
    with pytest.raises(S2SDError, match=r"queries must have shape \(Q, 16\)"):
        gallery.search(data["teacher_queries"], 10)
    with pytest.raises(S2SDError, match="k must be an integer from 1 to 16384"):
        gallery.search(data["queries"], 20_000)
    assert gallery.count() == N


def test_existing_collection_needs_overwrite(uri, data):
    MilvusGallery.create(uri, "rebuilt", STUDENT_DIM, None, {"v": 1}).close()
    with pytest.raises(S2SDError, match="collection 'rebuilt' already exists at .*pass overwrite"):
        MilvusGallery.create(uri, "rebuilt", STUDENT_DIM, None, {"v": 2})
    with MilvusGallery.create(uri, "rebuilt", STUDENT_DIM, None, {"v": 3}, overwrite=True) as rebuilt:
        assert (rebuilt.count(), rebuilt.metadata(), rebuilt.teacher_dim) == (0, {"v": 3}, None)
        with pytest.raises(S2SDError, match="has no teacher vectors"):
            rebuilt.teacher_vectors(np.array([[1]]))


def test_missing_collection_and_unreachable_server(uri):
    with pytest.raises(S2SDError, match=f"no Milvus collection 'absent' at {uri}"):
        MilvusGallery.open(uri, "absent")
    with pytest.raises(S2SDError, match="collection 'gallery' at http://127.0.0.1:1"):
        MilvusGallery.open("http://127.0.0.1:1", "gallery")


def test_bad_create_arguments(uri):
    with pytest.raises(S2SDError, match="unknown Milvus index 'ivf-pq'"):
        MilvusGallery.create(uri, "bad", STUDENT_DIM, None, {}, index="ivf-pq")
    with pytest.raises(S2SDError, match="student_dim must be an integer"):
        MilvusGallery.create(uri, "bad", 0, None, {})
    with pytest.raises(S2SDError, match="JSON-serialisable"):
        MilvusGallery.create(uri, "bad", STUDENT_DIM, None, {"array": np.zeros(2)})


def test_missing_pymilvus_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # makes `import pymilvus` raise ImportError
    for call in (
        lambda: MilvusGallery.create(str(tmp_path / "g.db"), "g", STUDENT_DIM, None, {}),
        lambda: MilvusGallery.open(str(tmp_path / "g.db"), "g"),
    ):
        with pytest.raises(MissingDependencyError, match=r"pip install 's2sd-deploy\[milvus\]'"):
            call()


def test_adding_in_two_calls_equals_adding_in_one(uri, gallery, data):
    with MilvusGallery.create(uri, "two_calls", STUDENT_DIM, TEACHER_DIM, METADATA) as split:
        for part in (slice(0, 1_234), slice(1_234, N)):
            ids = data["ids"][part]
            split.add(ids, data["student"][part], data["teacher"][part], image_paths(ids))
        assert split.count() == N
        one_scores, one_ids = gallery.search(data["queries"], 10)
        two_scores, two_ids = split.search(data["queries"], 10)
    np.testing.assert_array_equal(two_ids, one_ids)
    np.testing.assert_array_equal(two_scores, one_scores)


@pytest.mark.parametrize(
    "index,search_params,index_type", [("hnsw", {"ef": 128}, "HNSW"), ("ivf", {"nprobe": 1024}, "IVF_FLAT")]
)
def test_approximate_indexes(uri, data, index, search_params, index_type):
    with MilvusGallery.create(uri, f"index_{index}", STUDENT_DIM, None, {}, index=index) as approximate:
        approximate.add(data["ids"], data["student"], None, image_paths(data["ids"]))
        _, ids = approximate.search(data["student"][:20], 5, search_params)
    with MilvusGallery.open(uri, f"index_{index}") as reopened:
        assert reopened.index_type == index_type  # what the collection reports it was built with
    assert np.array_equal(ids[:, 0], data["ids"][:20])


def test_threads_may_share_a_gallery_for_search(gallery, data):
    expected = gallery.search(data["queries"], 10)[1]
    results = [None] * 4

    def search(slot: int) -> None:
        for _ in range(5):
            results[slot] = gallery.search(data["queries"], 10)[1]

    threads = [threading.Thread(target=search, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(result, expected) for result in results)
