"""The serving benchmark's parts run on tiny sizes and report what they measured (no timing assertions)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from s2sd_deploy.bench.serving import (
    clustered_unit_vectors,
    embedding_throughput,
    markdown,
    query_latency,
    recall_latency,
    searcher_throughput,
    synthetic_index,
)


def test_the_parts_on_a_small_gallery(exported_model, tmp_path):
    files = []
    for i in range(6):
        files.append(tmp_path / "queries" / f"{i}.png")
        files[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(files[-1])
    index = synthetic_index(tmp_path / "index", exported_model, 3000)
    latency = query_latency(index, files, repeats=1)
    assert {"decode", "preprocess", "encoder", "search", "search + re-rank", "end to end"} <= set(latency)
    assert latency["search and re-rank share of the encoder"] > 0 and latency["end to end"]["p99_ms"] > 0
    throughput = searcher_throughput(index, files, threads=2, rounds=2)
    assert throughput["share_of_encoder"] == throughput["searcher_qps"] / throughput["encoder_only_qps"]
    embedding = embedding_throughput(exported_model, files * 4, batch_size=8)
    assert embedding["images"] == 24
    assert embedding["share_of_onnxruntime"] == embedding["embed_images_per_s"] / embedding["onnxruntime_images_per_s"]
    rows = recall_latency(clustered_unit_vectors(2000, 16), "clustered", kinds=("hnsw", "ivf-sq8"), queries=50)
    assert rows[0]["kind"] == "flat" and rows[0]["recall@10"] == 1.0  # measured against faiss.knn
    assert {r["kind"] for r in rows} == {"flat", "hnsw", "ivf-sq8"}
    # Both kinds reach the neighbours on clustered data at their widest setting; the narrowest IVF probe does not.
    assert rows[-1]["recall@10"] >= 0.95 and max(r["recall@10"] for r in rows if r["kind"] == "hnsw") >= 0.95

    results = {
        "machine": {"cpu": "x", "cores": 2, "memory_gb": 1},
        "gallery_size": 3000,
        "recall_latency": rows,
        "models": {
            "tiny": {
                "student_dim": 16,
                "teacher_dim": 128,
                "image_size": 32,
                "latency_ms": latency,
                "searcher_throughput": throughput,
                "embedding_throughput": embedding,
            }
        },
    }
    text = markdown(results, "cmd")
    assert (
        f"**{latency['search and re-rank share of the encoder']:.1%}** of the encoder's time (goal: at most 10%)"
        in text
    )
    assert f"**{throughput['share_of_encoder']:.0%}** (goal: at least 90%)" in text
    assert f"**{embedding['share_of_onnxruntime']:.0%}** (goal: at least 85%)" in text
