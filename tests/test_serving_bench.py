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
    throughput = searcher_throughput(index, files, threads=2, seconds=0.5)
    assert throughput["searcher_qps"] > 0 and throughput["share_of_encoder"] > 0
    embedding = embedding_throughput(exported_model, files * 4, batch_size=8)
    assert embedding["images"] == 24 and embedding["share_of_onnxruntime"] > 0
    rows = recall_latency(clustered_unit_vectors(2000, 16), "clustered", kinds=("hnsw", "ivf-sq8"), queries=50)
    assert rows[0]["kind"] == "flat" and rows[0]["recall@10"] == 1.0
    assert {r["kind"] for r in rows} == {"flat", "hnsw", "ivf-sq8"} and all(0 <= r["recall@10"] <= 1 for r in rows)
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
    assert "goal: at most 10%" in text and "goal: at least 90%" in text and "goal: at least 85%" in text
