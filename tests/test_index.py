"""s2sd index / search / eval: the gallery, its faiss indexes, the cascade, shards, resume, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from s2sd_deploy.errors import S2SDError
from s2sd_deploy.serving import ann
from s2sd_deploy.serving.embedder import Embedder
from s2sd_deploy.serving.index_config import IndexConfig
from s2sd_deploy.serving.index_dir import IndexDir
from s2sd_deploy.serving.indexing import add_to_index, build_index, merge_indexes
from s2sd_deploy.serving.search import Searcher

S2SD = str(Path(sys.executable).with_name("s2sd"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """240 digit images in class folders (digits 5-9, 48 each), as PNG files."""
    from s2sd_deploy.training.datasets import load_digits_splits

    root = tmp_path_factory.mktemp("gallery")
    _, test = load_digits_splits()
    for label in range(5):
        for i, row in enumerate(np.flatnonzero(test.labels == label)[:48]):
            folder = root / f"digit{label + 5}"
            folder.mkdir(exist_ok=True)
            test.sources[row].save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def flat_index(gallery, exported_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "flat"
    build_index([gallery], exported_model, out, IndexConfig(index="flat", chunk_size=64, workers=2))
    return out


def files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def stored(paths) -> list[str]:
    """How an index stores paths: absolute and resolved."""
    return [str(Path(p).resolve()) for p in paths]


def test_build_writes_a_complete_self_describing_index(flat_index, exported_model, gallery):
    manifest = json.loads((flat_index / "manifest.json").read_text())
    assert manifest["format"] == "s2sd-index/2" and manifest["counts"] == {"images": 240, "skipped": 0}
    assert manifest["model"]["run_id"] == "tiny" and manifest["model"]["config_hash"]
    assert (manifest["model"]["embedding_dim"], manifest["model"]["teacher_dim"]) == (16, 128)
    assert manifest["index"]["kind"] == "flat" and manifest["build"]["images_per_s"] > 0
    assert set(manifest["files"]) >= {"model.onnx", "student.npy", "student.faiss", "teacher.npy", "paths.jsonl"}
    assert not (flat_index / ".build").exists()
    index = IndexDir.open(flat_index)
    written = index.gallery()
    assert written.paths == stored(files(gallery)) and written.teacher.dtype == np.float16
    student, teacher = Embedder(exported_model).embed(files(gallery), with_teacher=True)
    np.testing.assert_allclose(written.student, student, atol=1e-6)
    np.testing.assert_allclose(written.teacher, teacher, atol=2e-3)  # float16
    assert all(set(entry) >= {"bytes", "sha256"} for entry in manifest["files"].values())


def test_flat_search_equals_exact_search(flat_index, exported_model, gallery):
    searcher = Searcher(flat_index)
    queries = files(gallery)[::40]
    result = searcher.search(queries, k=5)
    gallery_student = IndexDir.open(flat_index).gallery().student
    expected_scores = Embedder(exported_model).embed(queries) @ gallery_student.T
    for q in range(len(queries)):
        order = np.argsort(-expected_scores[q], kind="stable")[:5]
        np.testing.assert_allclose(result.scores[q], expected_scores[q][order], atol=1e-5)
        assert result.paths[q] == [stored(files(gallery))[i] for i in result.ids[q]]
    assert result.ids[:, 0].tolist() == [files(gallery).index(q) for q in queries]  # each query finds itself


def test_rerank_equals_a_naive_loop(flat_index, exported_model, gallery):
    searcher = Searcher(flat_index)
    queries = files(gallery)[5::37]
    result = searcher.search(queries, k=4, rerank=20)
    stored = IndexDir.open(flat_index).gallery()
    student, teacher = Embedder(exported_model).embed(queries, with_teacher=True)
    for q in range(len(queries)):
        shortlist = np.argsort(-(stored.student @ student[q]), kind="stable")[:20]
        teacher_scores = stored.teacher[shortlist].astype(np.float32) @ teacher[q]
        expected = shortlist[np.argsort(-teacher_scores, kind="stable")][:4]
        assert result.ids[q].tolist() == expected.tolist()
        np.testing.assert_allclose(result.scores[q], np.sort(teacher_scores)[::-1][:4], rtol=1e-5)


def test_searcher_is_thread_safe(flat_index, gallery):
    searcher = Searcher(flat_index)
    batches = [files(gallery)[i::12][:6] for i in range(12)]
    expected = [searcher.search(batch, k=3, rerank=10).ids for batch in batches]
    got: dict[int, np.ndarray] = {}

    def work(first):
        for i in range(first, len(batches), 4):
            got[i] = searcher.search(batches[i], k=3, rerank=10).ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(got[i], expected[i]) for i in range(len(batches)))


def test_shards_merge_into_the_single_build(flat_index, gallery, exported_model, tmp_path):
    cfg = IndexConfig(index="flat", chunk_size=50, workers=2)
    for k in (1, 2, 3):
        build_index([gallery], exported_model, tmp_path / f"part{k}", cfg, shard=(k, 3))
    merge_indexes(tmp_path / "merged", [tmp_path / f"part{k}" for k in (1, 2, 3)], cfg)
    merged, whole = IndexDir.open(tmp_path / "merged").gallery(), IndexDir.open(flat_index).gallery()
    assert merged.paths == whole.paths
    np.testing.assert_array_equal(merged.student, whole.student)
    np.testing.assert_array_equal(merged.teacher, whole.teacher)
    queries = files(gallery)[3::50]
    a, b = Searcher(tmp_path / "merged").search(queries, k=5), Searcher(flat_index).search(queries, k=5)
    assert np.array_equal(a.ids, b.ids) and a.paths == b.paths


def test_add_appends_images(flat_index, gallery, exported_model, tmp_path):
    half = tmp_path / "half"
    for path in files(gallery)[:120]:
        target = half / path.relative_to(gallery)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    build_index([half], exported_model, tmp_path / "grown", IndexConfig(index="flat"))
    rest = files(gallery)[120:]
    manifest = add_to_index(tmp_path / "grown", rest, IndexConfig())
    assert manifest["counts"]["images"] == 240 and manifest["added"][0]["images"] == 120
    grown = IndexDir.open(tmp_path / "grown").gallery()
    whole = IndexDir.open(flat_index).gallery()
    np.testing.assert_array_equal(grown.student[120:], whole.student[120:])
    with pytest.raises(S2SDError, match="all 120 images given are already in .*grown \\(same path\\)"):
        add_to_index(tmp_path / "grown", rest, IndexConfig())


def test_an_interrupted_build_resumes_from_its_last_chunk(gallery, exported_model, tmp_path, monkeypatch):
    import s2sd_deploy.serving.indexing as indexing

    calls, killed = [], []
    real = indexing.embed_files

    def flaky(embedder, paths, *args):
        calls.append(len(paths))
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise RuntimeError("killed")  # during the third chunk
        return real(embedder, paths, *args)

    monkeypatch.setattr(indexing, "embed_files", flaky)
    cfg = IndexConfig(index="flat", chunk_size=50, workers=2)
    with pytest.raises(RuntimeError, match="killed"):
        build_index([gallery], exported_model, tmp_path / "resumed", cfg)
    assert len(list((tmp_path / "resumed" / ".build").glob("chunk-*.npz"))) == 2
    with pytest.raises(S2SDError, match="its build did not finish; run the same `s2sd index build` again"):
        Searcher(tmp_path / "resumed")
    calls.clear()
    build_index([gallery], exported_model, tmp_path / "resumed", cfg)
    assert calls == [50, 50, 40]  # chunks 3-5 only
    resumed = IndexDir.open(tmp_path / "resumed").gallery()
    straight = embed_all(exported_model, gallery)
    np.testing.assert_allclose(resumed.student, straight, atol=1e-6)


def test_an_interrupted_add_leaves_the_previous_index_whole(gallery, exported_model, tmp_path, monkeypatch):
    def killed(*args):
        raise RuntimeError("killed")

    kept = tmp_path / "kept"
    build_index(files(gallery)[:60], exported_model, kept, IndexConfig(index="flat"))
    queries = files(gallery)[100:103]
    before = Searcher(kept).search(queries, k=5)
    monkeypatch.setattr(IndexDir, "write_jsonl", killed)  # after the vectors and the faiss index are written
    with pytest.raises(RuntimeError, match="killed"):
        add_to_index(kept, files(gallery)[60:90], IndexConfig())
    monkeypatch.undo()
    assert IndexDir.open(kept).gallery().paths == stored(files(gallery)[:60])
    after = Searcher(kept).search(queries, k=5)
    assert np.array_equal(after.ids, before.ids) and after.paths == before.paths
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # nothing left beside it
    add_to_index(kept, files(gallery)[60:90], IndexConfig())
    assert len(IndexDir.open(kept).gallery()) == 90
    (kept / "paths.jsonl").write_text('"only-one.png"\n')
    with pytest.raises(S2SDError, match=r"index .*kept is damaged: paths.jsonl \(\d+ bytes, \d+ expected\)"):
        IndexDir.open(kept)


def test_a_build_killed_while_writing_resumes_without_embedding_again(gallery, exported_model, tmp_path, monkeypatch):
    import s2sd_deploy.serving.indexing as indexing

    def killed(*args):
        raise RuntimeError("killed")

    cfg = IndexConfig(index="flat", chunk_size=25)
    with monkeypatch.context() as patch:
        patch.setattr(IndexDir, "write_jsonl", killed)
        with pytest.raises(RuntimeError, match="killed"):
            build_index(files(gallery)[:60], exported_model, tmp_path / "index", cfg)
    monkeypatch.setattr(indexing, "embed_files", killed)  # every chunk must be read back
    manifest = build_index(files(gallery)[:60], exported_model, tmp_path / "index", cfg)
    assert manifest["build"]["images_embedded"] == 0 and manifest["build"]["images_resumed"] == 60
    assert manifest["build"]["images_per_s"] is None
    assert len(IndexDir.open(tmp_path / "index").gallery()) == 60
    assert not (tmp_path / "index" / ".build").exists()


def embed_all(model, root):
    return Embedder(model).embed(files(root))


def test_bad_images_are_skipped_and_listed(gallery, exported_model, tmp_path):
    images = tmp_path / "images"
    for path in files(gallery)[:30]:
        (images / path.parent.name).mkdir(parents=True, exist_ok=True)
        (images / path.parent.name / path.name).write_bytes(path.read_bytes())
    (images / "digit5" / "broken.png").write_bytes(b"broken")
    with pytest.raises(S2SDError, match="broken.png.*--skip-bad-images"):
        build_index([images], exported_model, tmp_path / "strict", IndexConfig(index="flat"))
    manifest = build_index(
        [images], exported_model, tmp_path / "lenient", IndexConfig(index="flat", skip_bad_images=True)
    )
    assert manifest["counts"] == {"images": 30, "skipped": 1}
    assert IndexDir.open(tmp_path / "lenient").gallery().skipped[0][0].endswith("broken.png")


# --- no duplicates, absolute paths, the .npz of s2sd embed ----------------------------------------------------
def test_add_and_merge_leave_out_images_already_indexed(flat_index, gallery, exported_model, tmp_path, monkeypatch):
    first = files(gallery)[:20]
    build_index(first, exported_model, tmp_path / "index", IndexConfig(index="flat"))
    monkeypatch.chdir(gallery)  # the same files again, by relative paths, plus 5 new ones
    again = [p.relative_to(gallery) for p in files(gallery)[:25]]
    manifest = add_to_index(tmp_path / "index", again, IndexConfig())
    assert manifest["counts"]["images"] == 25 and manifest["added"][-1]["duplicates_skipped"] == 20
    copy = tmp_path / "copy.png"
    copy.write_bytes(first[0].read_bytes())  # the same bytes under another name
    assert add_to_index(tmp_path / "index", [copy], IndexConfig(dedupe="path"))["counts"]["images"] == 26
    with pytest.raises(S2SDError, match="all 1 images given are already in .*same content"):
        add_to_index(tmp_path / "index", [tmp_path / "copy.png"], IndexConfig(dedupe="content"))
    twice = merge_indexes(tmp_path / "merged", [flat_index, flat_index], IndexConfig(index="flat"))
    assert twice["counts"]["images"] == 240 and twice["duplicates_skipped"] == 240
    kept = merge_indexes(tmp_path / "both", [flat_index, flat_index], IndexConfig(index="flat", dedupe="none"))
    assert kept["counts"]["images"] == 480


def test_paths_are_absolute_so_a_searcher_works_from_any_folder(gallery, exported_model, tmp_path, monkeypatch):
    monkeypatch.chdir(gallery.parent)
    build_index([gallery.name], exported_model, tmp_path / "index", IndexConfig(index="flat"))
    monkeypatch.chdir(tmp_path)
    result = Searcher(tmp_path / "index").search([files(gallery)[0]], k=3)
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in result.paths[0])


def test_an_index_builds_from_the_npz_of_s2sd_embed(flat_index, gallery, exported_model, tmp_path):
    from s2sd_deploy.serving.embedder import embed_files, save_embeddings

    embedder = Embedder(exported_model)
    halves = [files(gallery)[:100], files(gallery)[100:]]
    for i, half in enumerate(halves):
        save_embeddings(tmp_path / f"part-{i}.npz", embed_files(embedder, half), embedder.metadata)
    parts = [tmp_path / "part-0.npz", tmp_path / "part-1.npz"]
    manifest = build_index(parts, exported_model, tmp_path / "index", IndexConfig(index="flat"))
    assert manifest["counts"]["images"] == 240
    built, whole = IndexDir.open(tmp_path / "index").gallery(), IndexDir.open(flat_index).gallery()
    assert built.paths == whole.paths and built.teacher is None
    np.testing.assert_allclose(built.student, whole.student, atol=1e-6)
    searcher = Searcher(tmp_path / "index")
    assert searcher.search(files(gallery)[:1], k=1).scored_by == "student"
    with pytest.raises(S2SDError, match="has no teacher vectors .*built from the .npz files of `s2sd embed`"):
        searcher.search(files(gallery)[:1], k=1, rerank=5)


def test_k_and_rerank_beyond_the_gallery_are_clamped(flat_index, gallery):
    result = Searcher(flat_index).search(files(gallery)[:2], k=1000, rerank=5000)
    assert result.ids.shape == (2, 240) and result.scored_by == "teacher"
    assert sorted(result.ids[0].tolist()) == list(range(240))


# --- faiss indexes on clustered vectors, where neighbours have structure --------------------------------------
def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(2, n // 50), d)).astype(np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8", "ivf-pq"])
def test_approximate_indexes_are_tuned_to_the_minimum_recall(kind):
    vectors = clustered(5000, 32)
    index, factory = ann.build(vectors, kind)
    tuned = ann.tune(index, kind, factory, vectors, min_recall=0.9, sample=300)
    assert tuned.recall_at_10 >= 0.9 and tuned.parameter.split("=")[0] in ("nprobe", "efSearch")
    queries = vectors[:300]
    exact = vectors @ queries.T
    truth = np.argsort(-exact, axis=0)[:10].T
    from s2sd_deploy.metrics import recall_against_exact

    found = ann.search(tuned.index, queries, 10, vectors, tuned.refine)[1]
    assert recall_against_exact(found, truth, 10) >= 0.85  # the measurement holds


def test_a_build_below_the_minimum_recall_is_refused_with_the_numbers():
    vectors = clustered(2000, 32)
    index, factory = ann.build(vectors, "ivf-pq")
    with pytest.raises(
        S2SDError,
        match=r"ivf-pq \(IVF\d+,PQ8\) reaches recall@10 0\.\d+ at best .*nprobe=1: .*below "
        r"--min-recall 0.9999; use --index hnsw or flat",
    ):
        ann.tune(index, "ivf-pq", factory, vectors, min_recall=0.9999, sample=200)


def test_auto_picks_by_size_and_memory():
    assert ann.choose_kind(50_000, 128, 4 * 2**30) == "flat"
    assert ann.choose_kind(2_000_000, 128, 4 * 2**30) == "hnsw"
    assert ann.choose_kind(20_000_000, 128, 4 * 2**30) == "ivf-pq"
    assert ann.choose_kind(50_000, 128, 2**20) == "ivf-pq"  # does not fit a 1 MiB budget


# --- the command line -----------------------------------------------------------------------------------------
def test_cli_build_search_and_eval(gallery, exported_model, tmp_path):
    build = subprocess.run(
        [
            S2SD,
            "index",
            "build",
            str(gallery),
            "--model",
            str(exported_model),
            "--out",
            str(tmp_path / "cli-index"),
            "--index",
            "flat",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert "indexed 240 images: flat, exact" in build.stdout
    query = files(gallery)[7]
    search = subprocess.run(
        [S2SD, "search", str(tmp_path / "cli-index"), str(query), "--k", "3", "--rerank", "20", "--json"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert search.returncode == 0, search.stderr
    answer = json.loads(search.stdout)[0]
    hits = answer["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(query.resolve()) and answer["scored_by"] == "teacher"
    evaluated = subprocess.run(
        [S2SD, "eval", str(exported_model), "--data-root", str(gallery), "--out", str(tmp_path / "eval.json")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results["heads"]) == {"student-16", "teacher-128", "cascade-16>128@50"}
    from s2sd_deploy.metrics import evaluate_embeddings

    labels = np.repeat(np.arange(5), 48)
    student = evaluate_embeddings(embed_all(exported_model, gallery), labels)
    assert results["heads"]["student-16"]["recall@1"] == pytest.approx(student["recall@1"])


def test_eval_with_query_and_gallery_folders(gallery, exported_model, tmp_path):
    from s2sd_deploy.metrics import recall_at_k
    from s2sd_deploy.serving.evaluate import evaluate

    queries, rest = tmp_path / "queries", tmp_path / "gallery"
    for i, path in enumerate(files(gallery)):
        target = (queries if i % 24 == 0 else rest) / path.relative_to(gallery)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    results = evaluate(exported_model, query_root=queries, gallery_root=rest, shortlists=(230,))
    heads = results["heads"]
    # Re-ranking the whole gallery by the teacher is the teacher's own search.
    cascade, teacher = heads["cascade-16>128@230"], heads["teacher-128"]
    assert set(cascade) == {"recall@1", "recall@2", "recall@4", "recall@8"}
    assert cascade == {key: teacher[key] for key in cascade}
    student = Embedder(exported_model)
    scores = student.embed(files(queries)) @ student.embed(files(rest)).T
    query_labels, gallery_labels = (np.array([p.parent.name for p in files(root)]) for root in (queries, rest))
    expected = recall_at_k(gallery_labels[np.argsort(-scores, axis=1)[:, :8]], query_labels, [1, 2, 4, 8])
    assert [heads["student-16"][f"recall@{k}"] for k in expected] == pytest.approx(list(expected.values()))
    with pytest.raises(S2SDError, match="pass either --data-root, or both --query-root and --gallery-root"):
        evaluate(exported_model, query_root=queries)


def test_serving_runs_without_torch(flat_index, gallery):
    code = (
        "import sys\n"
        "from s2sd_deploy import Embedder, Searcher\n"
        f"result = Searcher({str(flat_index)!r}).search([{str(files(gallery)[0])!r}], k=3, rerank=10)\n"
        "assert result.ids.shape == (1, 3)\n"
        "print(','.join(m for m in ('torch', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_milvus_backend_finds_what_faiss_finds(flat_index, gallery, exported_model, tmp_path, monkeypatch):
    pytest.importorskip("pymilvus")
    monkeypatch.chdir(tmp_path)
    cfg = IndexConfig(backend="milvus", uri="gallery.db", collection="digits", workers=2)
    manifest = build_index([gallery], exported_model, tmp_path / "milvus-index", cfg)
    assert manifest["backend"]["name"] == "milvus" and manifest["counts"]["images"] == 240
    assert manifest["backend"]["uri"] == str((tmp_path / "gallery.db").resolve())  # found from anywhere
    monkeypatch.chdir(gallery)
    queries = files(gallery)[11::60]
    via_milvus = Searcher(tmp_path / "milvus-index")
    for rerank in (None, 20):
        a, b = via_milvus.search(queries, k=5, rerank=rerank), Searcher(flat_index).search(queries, k=5, rerank=rerank)
        assert np.array_equal(a.ids, b.ids) and a.paths == b.paths
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
