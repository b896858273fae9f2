"""What serving costs: a query end to end, the Searcher's throughput, embedding throughput, and the recall the
approximate indexes trade for speed — each against the floor that cannot be avoided (the encoder).

- :func:`query_latency`: one query at a time through :class:`Searcher` (decode, preprocess, encoder, search,
  re-rank), p50 and p99, with the stages timed on their own beside it.
- :func:`searcher_throughput`: queries per second of ``Searcher.search`` from several threads, against the
  encoder alone on preprocessed tensors from as many threads.
- :func:`embedding_throughput`: images per second of ``s2sd embed``'s path (files decoded in threads ahead of
  the model) against ONNX Runtime alone on preprocessed tensors at the same batch.
- :func:`recall_latency`: recall@10 against exact search and batch-1 latency of every index kind at every
  search setting, on the model's real embeddings and on a clustered synthetic gallery.

The gallery of the latency parts is synthetic (clustered unit vectors at the student's and teacher's
dimensions); queries are real image files embedded by the real model.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from ..metrics import recall_against_exact
from ..serving import ann
from ..serving.embedder import Embedder, embed_files
from ..serving.images import open_image
from ..serving.index_dir import Gallery, IndexDir
from ..serving.search import Searcher
from ..timing import latency_stats, measure, measure_interleaved


def clustered_unit_vectors(n: int, d: int, seed: int = 0, clusters: int | None = None) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: neighbours with structure, as real embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters or max(2, n // 100), d), dtype=np.float32)
    points = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def synthetic_index(folder: Path, model: Path, n: int, kind: str = "flat", seed: int = 0) -> Path:
    """An index directory over ``n`` synthetic gallery vectors at the model's dimensions (and its teacher's)."""
    embedder = Embedder(model)
    student = clustered_unit_vectors(n, embedder.dim, seed)
    teacher = clustered_unit_vectors(n, embedder.teacher_dim, seed + 1) if embedder.teacher_dim else None
    gallery = Gallery(
        student,
        None if teacher is None else teacher.astype(np.float16),
        [f"synthetic/{i:07d}.jpg" for i in range(n)],
        [],
    )
    index, factory = ann.build(student, kind, seed)
    tuned = ann.tune(index, kind, factory, student, 0.95, 500, seed)
    description = {"embedding_dim": embedder.dim, "teacher_dim": embedder.teacher_dim, "file_sha256": "synthetic"}
    IndexDir(folder).write(
        gallery,
        model,
        tuned,
        {"model": description, "backend": {"name": "faiss"}, "counts": {"images": n, "skipped": 0}},
    )
    return folder


def query_latency(index: Path, queries: list[Path], k: int = 10, rerank: int = 50, repeats: int = 3) -> dict:
    """Batch-1 queries end to end through the Searcher, and each stage alone, in ms (p50, p99)."""
    searcher = Searcher(index, threads=None)
    embedder = searcher.embedder
    images = [open_image(path) for path in queries]
    tensors = [embedder.preprocess(image)[None] for image in images]
    embedded = [embedder.run(tensor, with_teacher=True) for tensor in tensors]  # (student, teacher) per query
    stages = {
        "decode": lambda i: open_image(queries[i]),
        "preprocess": lambda i: embedder.preprocess(images[i]),
        "encoder": lambda i: embedder.run(tensors[i], with_teacher=bool(rerank)),
        "search": lambda i: searcher.search_embeddings(embedded[i][0], None, k),
        "search + re-rank": lambda i: searcher.search_embeddings(*embedded[i], k, rerank),
        "end to end": lambda i: searcher.search([queries[i]], k, rerank),
    }
    result = {}
    for name, stage in stages.items():
        position = iter(range(10**12))  # every query in turn, ``repeats`` times over
        seconds = measure(
            lambda: stage(next(position) % len(queries)),
            warmup=3,
            min_repeats=repeats * len(queries),
            max_repeats=repeats * len(queries),
        )
        result[name] = {key: value for key, value in latency_stats(seconds, 1).items() if key != "qps"}

    encoder = result["encoder"]["p50_ms"]
    result["search and re-rank share of the encoder"] = result["search + re-rank"]["p50_ms"] / encoder
    return result


def concurrent_calls(work, threads: int, calls: int) -> None:
    """``calls`` calls of ``work(i)`` (i = 0, 1, ...) shared by ``threads`` threads at once."""
    shares = [range(slot, calls, threads) for slot in range(threads)]
    workers = [threading.Thread(target=lambda share=share: [work(i) for i in share]) for share in shares]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def searcher_throughput(
    index: Path, queries: list[Path], threads: int = 2, rounds: int = 5, k: int = 10, rerank: int = 50
) -> dict:
    """Queries per second of Searcher.search (one image each) from ``threads`` threads, against the encoder alone
    on the same images preprocessed, from as many threads: the encoder is the floor of a query's cost on a CPU.
    The two alternate, round after round (each round: every query once), and the medians are compared."""
    searcher = Searcher(index)
    embedder = searcher.embedder
    tensors = [embedder.preprocess(open_image(path))[None] for path in queries]
    seconds = measure_interleaved(
        {
            "encoder": lambda: concurrent_calls(
                lambda i: embedder.run(tensors[i], with_teacher=bool(rerank)), threads, len(queries)
            ),
            "searcher": lambda: concurrent_calls(
                lambda i: searcher.search([queries[i]], k, rerank), threads, len(queries)
            ),
        },
        min_rounds=rounds,
        budget_s=0.0,
    )
    encoder, full = (len(queries) / float(np.median(seconds[name])) for name in ("encoder", "searcher"))
    return {"threads": threads, "searcher_qps": full, "encoder_only_qps": encoder, "share_of_encoder": full / encoder}


def embedding_throughput(
    model: Path, files: list[Path], batch_size: int = 32, workers: int = 2, rounds: int = 3
) -> dict:
    """Images per second of embedding files (decoding in threads ahead of the model), against ONNX Runtime alone
    on the same images already preprocessed, at the same batch; the two alternate and medians are compared."""
    embedder = Embedder(model, batch_size=batch_size)
    with_teacher = embedder.teacher_dim is not None
    tensors = np.stack([embedder.preprocess(open_image(path)) for path in files])

    def model_only():
        for i in range(0, len(tensors), batch_size):
            embedder.run(tensors[i : i + batch_size], with_teacher)

    seconds = measure_interleaved(
        {"onnxruntime": model_only, "embed": lambda: embed_files(embedder, files, workers, with_teacher=with_teacher)},
        min_rounds=rounds,
        budget_s=0.0,
    )
    model_rate, pipeline = (len(files) / float(np.median(seconds[name])) for name in ("onnxruntime", "embed"))
    return {
        "batch": batch_size,
        "decode_threads": workers,
        "images": len(files),
        "embed_images_per_s": pipeline,
        "onnxruntime_images_per_s": model_rate,
        "share_of_onnxruntime": pipeline / model_rate,
    }


def recall_latency(
    vectors: np.ndarray, data: str, kinds=("hnsw", "ivf-sq8", "ivf-pq"), queries: int = 300, seed: int = 0
) -> list[dict]:
    """For each index kind and search setting: recall@10 against exact search (queries are gallery vectors) and
    batch-1 latency; the flat index is the exact reference."""
    rng = np.random.default_rng(seed)
    sample = vectors[rng.choice(len(vectors), min(queries, len(vectors)), replace=False)]
    truth = faiss.knn(sample, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]  # the reference, untimed
    exact, _ = ann.build(vectors, "flat")
    rows = [
        {
            "data": data,
            "kind": "flat",
            "parameter": None,
            "recall@10": recall_against_exact(ann.search(exact, sample, 10)[1], truth, 10),
            **point_latency(lambda q: ann.search(exact, q, 10), sample),
        }
    ]
    for kind in kinds:
        index, factory = ann.build(vectors, kind, seed)
        refine = ann.REFINE if kind == "ivf-pq" else 0
        name, steps = ("efSearch", ann.EF_SEARCH_STEPS) if kind == "hnsw" else ("nprobe", ann.NPROBE_STEPS)
        if name == "nprobe":
            steps = [s for s in steps if s <= faiss.extract_index_ivf(index).nlist]
        for step in steps:
            ann.set_search_parameter(index, f"{name}={step}")
            found = ann.search(index, sample, 10, vectors, refine)[1]
            rows.append(
                {
                    "data": data,
                    "kind": kind,
                    "factory": factory,
                    "parameter": f"{name}={step}",
                    "recall@10": recall_against_exact(found, truth, 10),
                    **point_latency(lambda q: ann.search(index, q, 10, vectors, refine), sample),
                }
            )
    return rows


def point_latency(search, queries: np.ndarray, budget_s: float = 0.3) -> dict:
    """p50 and p99 batch-1 latency (ms) of ``search`` over the query sample, one query per call."""
    position = iter(range(10**12))
    seconds = measure(lambda: search(queries[next(position) % len(queries)][None]), budget_s=budget_s, min_repeats=50)
    stats = latency_stats(seconds, 1)
    return {"p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"]}


# --- the whole benchmark -----------------------------------------------------------------------------------
def paper_encoder(folder: Path) -> Path:
    """The paper's deployed shape, untrained (speed does not depend on the weights): ResNet-50 at 224 px, a 128-d
    student and a 2048-d teacher, exported as ``s2sd export --with-teacher`` would."""
    from ..deploy.export import export_onnx
    from ..serving.interface import INPUT, ONNX_FORMAT, OUTPUT, TEACHER_OUTPUT
    from ..serving.preprocessing import Preprocessing
    from ..training.model import build_embedding_model

    model = build_embedding_model("resnet50", 128, [2048], freeze_bn=True).eval()
    metadata = {
        "s2sd_format": ONNX_FORMAT,
        "embedding_dim": "128",
        "teacher_dim": "2048",
        "input_name": INPUT,
        "output_name": OUTPUT,
        "teacher_output_name": TEACHER_OUTPUT,
        "normalized": "true",
        "run_id": "resnet50-224-untrained",
        **Preprocessing(224, 256).to_metadata(),
    }
    return export_onnx(model.deployed(with_teacher=True), folder / "resnet50.onnx", 224, metadata=metadata)


def photo_like_files(folder: Path, count: int, size=(500, 375), seed: int = 0) -> list[Path]:
    """JPEG files of smooth random images at a typical photo size: decoding costs what a photo's does."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        path = folder / f"photo-{i:04d}.jpg"
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def run_serving_benchmark(
    models: dict[str, tuple[Path, list[Path]]],
    workdir: Path,
    gallery_size: int = 100_000,
    threads: int = 2,
    real_embeddings: np.ndarray | None = None,
    progress=print,
) -> dict:
    """Every part for each named (model, query files): the end-to-end latency and throughputs on a synthetic
    gallery of ``gallery_size``, then recall against latency on real and clustered synthetic embeddings."""
    from .machine import machine_info

    results = {"machine": machine_info(), "gallery_size": gallery_size, "threads": threads, "models": {}}
    for name, (model, files) in models.items():
        progress(f"{name}: index of {gallery_size:,} synthetic vectors")
        index = synthetic_index(workdir / f"{name}-index", model, gallery_size)
        embedder = Embedder(model)
        entry = {
            "model": str(model),
            "student_dim": embedder.dim,
            "teacher_dim": embedder.teacher_dim,
            "image_size": embedder.preprocess.image_size,
            "query_files": len(files),
        }
        progress(f"{name}: query latency")
        entry["latency_ms"] = query_latency(index, files[:32])
        progress(f"{name}: Searcher throughput from {threads} threads")
        entry["searcher_throughput"] = searcher_throughput(index, files[:64], threads)
        progress(f"{name}: embedding throughput")
        entry["embedding_throughput"] = embedding_throughput(model, files, workers=threads)
        results["models"][name] = entry
    progress("recall against latency")
    results["recall_latency"] = recall_latency(
        clustered_unit_vectors(gallery_size, 128, 7), "clustered synthetic, 128-d"
    )
    if real_embeddings is not None:
        results["recall_latency"] += recall_latency(real_embeddings, f"real embeddings, {real_embeddings.shape[1]}-d")
    return results


def markdown(results: dict, command: str) -> str:
    from ..tables import markdown_table

    machine = results["machine"]
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB. Gallery: "
        f"{results['gallery_size']:,} clustered synthetic vectors at each model's dimensions (flat index, teacher "
        "vectors float16, memory-mapped); queries: real image files through the real model.",
        "",
    ]
    for name, entry in results["models"].items():
        latency = entry["latency_ms"]
        rows = [
            [stage, f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}"] for stage, v in latency.items() if isinstance(v, dict)
        ]
        searcher, embedding = entry["searcher_throughput"], entry["embedding_throughput"]
        lines += [
            f"## {name}: {entry['student_dim']}-d student, {entry['teacher_dim']}-d teacher, {entry['image_size']} px",
            "",
            "Batch-1 query, k=10, re-rank of the top 50 (ms):",
            "",
            markdown_table(["stage", "p50", "p99"], rows),
            "",
            f"Search + re-rank: **{latency['search and re-rank share of the encoder']:.1%}** of the encoder's "
            "time (goal: at most 10%).",
            "",
            f"Searcher from {searcher['threads']} threads: {searcher['searcher_qps']:.1f} queries/s against "
            f"{searcher['encoder_only_qps']:.1f}/s for the encoder alone on preprocessed images: "
            f"**{searcher['share_of_encoder']:.0%}** (goal: at least 90%).",
            "",
            f"Embedding {embedding['images']} files at batch {embedding['batch']} with "
            f"{embedding['decode_threads']} decoding threads: {embedding['embed_images_per_s']:.1f} images/s "
            f"against {embedding['onnxruntime_images_per_s']:.1f}/s for ONNX Runtime on preprocessed tensors: "
            f"**{embedding['share_of_onnxruntime']:.0%}** (goal: at least 85%).",
            "",
        ]
    rows = [
        [
            r["data"],
            r["kind"],
            r["parameter"] or "exact",
            f"{r['recall@10']:.3f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
        ]
        for r in results["recall_latency"]
    ]
    lines += [
        "## Approximate indexes: recall@10 against exact search, and batch-1 latency",
        "",
        markdown_table(["data", "index", "setting", "recall@10", "p50 ms", "p99 ms"], rows),
        "",
    ]
    return "\n".join(lines)


def plot_recall_latency(results: dict, path: Path) -> None:
    from ..plots import pyplot, save_figure

    datasets = sorted({r["data"] for r in results["recall_latency"]})
    figure, axes = pyplot().subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for axis, data in zip(axes[0], datasets):
        rows = [r for r in results["recall_latency"] if r["data"] == data]
        for kind in dict.fromkeys(r["kind"] for r in rows):
            points = [(r["p50_ms"], r["recall@10"]) for r in rows if r["kind"] == kind]
            axis.plot(*zip(*points), marker="o", label=kind)
        axis.set(xscale="log", xlabel="p50 latency at batch 1, ms", ylabel="recall@10 vs exact", title=data)
        axis.legend()
    save_figure(figure, path)
