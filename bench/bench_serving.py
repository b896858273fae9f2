"""What serving costs: end-to-end query latency and its stages, Searcher and embedding throughput against the
encoder alone, and recall@10 against latency for every index kind (goals in README, "Serving benchmark").

Usage:  .venv/bin/python bench/bench_serving.py [--run runs/RUN] [--gallery 100000] [--out bench/results/serving]
Models: the run's exported model (with its teacher) on its own test images, and the paper's ResNet-50 at 224 px
(untrained: speed does not depend on weights) on photo-sized JPEGs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from s2sd_deploy.atomic_files import write_json_atomic, write_text_atomic
from s2sd_deploy.bench.serving import (
    markdown,
    paper_encoder,
    photo_like_files,
    plot_recall_latency,
    run_serving_benchmark,
)


def run_model_and_images(run: Path, workdir: Path, count: int) -> tuple[Path, list[Path], np.ndarray]:
    """The run exported with its teacher, its first ``count`` test images as PNG files, and every test image's
    student embedding (the real embeddings of the recall part)."""
    from s2sd_deploy.deploy.config import ExportConfig
    from s2sd_deploy.deploy.export import export_run
    from s2sd_deploy.serving.embedder import Embedder
    from s2sd_deploy.training.datasets import splits_for
    from s2sd_deploy.training.run_dir import RunDir

    export_run(ExportConfig(run=str(run), out=str(workdir / "run-export"), with_teacher=True, verify_limit=64))
    model = workdir / "run-export" / "model.onnx"
    _, test = splits_for(RunDir.open(run).config)
    files = []
    for i, image in enumerate(test.sources[:count]):
        files.append(workdir / "run-images" / f"{i:05d}.png")
        files[-1].parent.mkdir(parents=True, exist_ok=True)
        image.save(files[-1])
    return model, files, Embedder(model).embed(test.sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a trained run (default: the newest under runs/)")
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256, help="query and embedding files per model")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving"))
    args = parser.parse_args()
    from s2sd_deploy.training.run_dir import RunDir

    run = args.run or (RunDir.latest().path if RunDir.latest() else None)
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        models, real = {}, None
        if run:
            model, files, real = run_model_and_images(run, workdir, args.images)
            models[f"run {Path(run).name}"] = (model, files)
        models["resnet50 at 224 px"] = (paper_encoder(workdir), photo_like_files(workdir / "photos", args.images))
        results = run_serving_benchmark(models, workdir, args.gallery, args.threads, real)
    results["command"] = "python " + " ".join(sys.argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", json.loads(json.dumps(results, default=float)))
    write_text_atomic(args.out / "results.md", markdown(results, results["command"]))
    plot_recall_latency(results, args.out / "recall_vs_latency.png")
    print(markdown(results, results["command"]))


if __name__ == "__main__":
    main()
