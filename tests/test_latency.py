"""bench-latency: safety checks, the contrast, outputs, and the CLI on small sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2sd_deploy.bench.latency import BenchConfig, run_benchmark
from s2sd_deploy.bench.machine import check_memory
from s2sd_deploy.bench.retrieval_cost import contrast
from s2sd_deploy.errors import MissingDependencyError, S2SDError
from s2sd_deploy.timing import latency_stats, measure, measure_interleaved


def test_memory_estimate_refuses_before_allocating(monkeypatch):
    monkeypatch.setattr("s2sd_deploy.bench.machine.available_memory_bytes", lambda: 2**30)
    with pytest.raises(S2SDError, match="needs about .* GiB but 1.0 GiB is available; drop --large"):
        check_memory(BenchConfig(large=True), [128, 2048])


def test_gpu_needs_torch_cuda_but_not_faiss_gpu(monkeypatch):
    import torch

    from s2sd_deploy.bench.kernels import exact_kernels
    from s2sd_deploy.bench.latency import check_gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(MissingDependencyError, match="--device gpu: torch sees no CUDA GPU"):
        run_benchmark(BenchConfig(device="gpu"))
    # With CUDA but faiss-cpu, the torch kernels measure the GPU and the results say faiss-gpu was absent.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for module in ("s2sd_deploy.bench.kernels", "s2sd_deploy.bench.latency"):
        monkeypatch.setattr(f"{module}.faiss_gpu_count", lambda: 0)
    assert exact_kernels("gpu") == ("matmul-topk", "matmul-grouped")
    assert check_gpu("gpu")[0].startswith("faiss-gpu absent") and check_gpu("cpu") == []
    for module in ("s2sd_deploy.bench.kernels", "s2sd_deploy.bench.latency"):
        monkeypatch.setattr(f"{module}.faiss_gpu_count", lambda: 1)
    assert exact_kernels("gpu") == ("faiss-flat", "matmul-topk", "matmul-grouped") and check_gpu("gpu") == []


def test_latency_stats_and_measure():
    stats = latency_stats(np.array([0.001, 0.002, 0.003, 0.004]), batch=4)
    assert stats["p50_ms"] == pytest.approx(2.5) and stats["qps"] == pytest.approx(1600)
    assert len(measure(lambda: None, min_repeats=7, budget_s=0.0)) == 7
    calls = []
    seconds = measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, min_rounds=3, budget_s=0.0
    )
    assert calls == ["a", "b"] * 4 and len(seconds["a"]) == len(seconds["b"]) == 3  # one warm-up round, then in turn


def test_contrast_ratios_against_the_student():
    rows = [
        {"index": "flat", "gallery": 1000, "batch": 1, "dim": d, "p50_ms": ms, "kernel": "k", "gallery_read_gbs": 0.032}
        for d, ms in ((8, 1.0), (32, 3.0))
    ]
    out = contrast(rows, 8, {"memory_bandwidth_gbs": 1.0, "gemm_gflops": 1.0})
    assert [c["measured_ratio"] for c in out] == [1.0, 3.0] and [c["theoretical_ratio"] for c in out] == [1.0, 4.0]
    # Each search is held to the read speed of its own gallery: 32 KB in 1 ms is 100% of 0.032 GB/s.
    assert [round(c["bandwidth_share"], 6) for c in out] == [1.0, round(128e3 / 3e-3 / 1e9 / 0.032, 6)]


def test_the_headline_comes_first_and_the_budget_drops_only_the_rest(trained_run, tmp_path):
    results = run_benchmark(
        BenchConfig(run=str(trained_run), dims=[8, 64], gallery_sizes=[300, 500], max_seconds=1e-9, out=str(tmp_path))
    )
    # The student's d (16) joins the dimensions even when --dims leaves it out; the headline is 16-d against the
    # largest d at the largest gallery, at every batch, whatever the budget.
    assert results["dims"] == [8, 16, 64]
    assert {(r["gallery"], r["dim"], r["batch"]) for r in results["retrieval"]} == {
        (500, d, b) for d in (16, 64) for b in (1, 64)
    }
    assert {(c["dim"], c["measured_ratio"] is not None) for c in results["contrast"]} == {(16, True), (64, True)}
    skipped = " ".join(results["notes"])
    for part in ("cascade latency", "accuracy", "encoder cost", "retrieval cost"):
        assert part in skipped, skipped
    assert "cascade_latency" not in results and "accuracy" not in results


def test_cli_small_run_writes_every_output(trained_run, tmp_path):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("s2sd")),
            "bench-latency",
            "--run",
            str(trained_run),
            "--dims",
            "16,64",
            "--gallery-sizes",
            "1000,3000",
            "--query-batch",
            "1,8",
            "--index",
            "flat,hnsw,ivfpq",
            "--out",
            str(tmp_path),
            "--no-encoder",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("└")[0]
    assert "…" not in table and max(len(line) for line in table.splitlines()) <= 80, table  # fits 80 columns
    saved = json.loads((tmp_path / "results.json").read_text())
    regimes = {(r["gallery"], r["dim"], r["batch"], r["index"]) for r in saved["retrieval"]}
    assert len(regimes) == 2 * 2 * 2 * 3
    assert all(r["data"] == "synthetic unit-norm vectors" for r in saved["retrieval"])
    # Every exact kernel, not only the chosen one, returns IndexFlatIP's neighbours.
    assert all(
        kernel["verified_same_neighbours"]
        for r in saved["retrieval"]
        if r["index"] == "flat"
        for kernel in r["kernels"].values()
    )

    heads = saved["accuracy"]["heads"]
    assert {"student-16", "teacher-64", "teacher-128"} <= set(heads) and any(
        h.startswith("cascade-16>128@") for h in heads
    )
    limits = saved["machine_limits"]
    assert saved["machine"]["cores"] and limits["gemm_gflops"] == max(
        limits["gemm_by_library_and_shape_gflops"].values()
    )
    assert set(limits["bandwidth_by_library_gbs"]) == {"numpy", "torch", "faiss"}
    for name in ("results.md", "latency_vs_gallery.png", "recall_vs_latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "synthetic" in (tmp_path / "results.md").read_text()


def test_invalid_index_is_named():
    with pytest.raises(S2SDError, match="invalid --index 'flat,annoy'; choose from: flat, hnsw, ivfpq"):
        BenchConfig(indexes=["flat", "annoy"]).validate()


def test_encoder_cost_compares_torch_and_onnxruntime(trained_run, tmp_path):
    from s2sd_deploy.bench.encoder_cost import encoder_cost
    from s2sd_deploy.training.run_dir import RunDir

    model, _ = RunDir.open(trained_run).load_model()
    rows = encoder_cost(model, 32, "run", tmp_path, budget_s=0.0)
    assert [(r["batch"], r["backend"]) for r in rows] == [(1, "CPUExecutionProvider"), (32, "CPUExecutionProvider")]
    for row in rows:
        assert row["max_abs_diff"] < 1e-5 and row["min_cosine"] > 0.99999 and row["torch_ms_per_batch"] > 0
        assert row["speedup"] == pytest.approx(row["torch_ms_per_batch"] / row["onnx_ms_per_batch"])


def test_noise_is_the_spread_between_repeats():
    from s2sd_deploy.timing import NOISE_LIMIT, noise, noisy, spread

    steady = np.array([1.00, 1.01, 0.99, 1.02, 1.00, 0.98, 1.01, 1.00, 0.99, 1.00])
    p10, p50, p90 = np.percentile(steady, [10, 50, 90])
    assert spread(steady) == pytest.approx((p90 - p10) / p50)
    assert noise(steady) == {"spread": pytest.approx(spread(steady)), "noisy": False}
    contended = steady.copy()
    contended[::3] *= 3  # another process took the core every third repeat
    assert spread(contended) > NOISE_LIMIT and noise(contended)["noisy"]
    assert noise(np.array([1.0, 1.0]))["noisy"]  # two repeats measure no spread
    assert noisy({"noisy": False}, {"noisy": True}) and not noisy({"noisy": False}, {})
    assert latency_stats(steady / 1e3, batch=1)["noisy"] is False


def test_a_busy_machine_is_noted(monkeypatch):
    from s2sd_deploy.timing import LoadWatch

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    quiet = LoadWatch()
    assert quiet.stop() == {"before": 0.3, "after": 0.3, "cores": 2, "busy": False} and quiet.note() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 1.0, 0.5))
    busy = LoadWatch()
    assert busy.stop()["busy"] and "1-minute load average 2.20 before this run, 2.20 after, on 2 cores" in busy.note()
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.2, 0.1))
    late = LoadWatch()  # quiet at the start, others arrived during the run: its own threads account for about 2
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 1.0, 0.5))
    assert late.stop()["busy"]
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 1.0, 0.5))
    alone = LoadWatch()
    alone.before = 0.3
    assert not alone.stop()["busy"]  # 2.4 on 2 cores: the benchmark's own threads


def test_untrusted_figures_are_marked_in_table_and_markdown(capsys):
    from s2sd_deploy.bench.latency_report import MARK, headline_rows, markdown, print_headline

    def row(dim, ms, noisy):
        return {
            "gallery": 1000,
            "batch": 1,
            "dim": dim,
            "kernel": "k",
            "p50_ms": ms,
            "measured_ratio": ms,
            "theoretical_ratio": dim / 8,
            "bandwidth_share": 0.5,
            "gemm_share": 0.1,
            "noisy": noisy,
        }

    results = {
        "contrast": [row(8, 1.0, False), row(32, 523.0, True)],
        "encoder": [
            {
                "model": "run",
                "image_size": 32,
                "batch": 1,
                "backend": "CPUExecutionProvider",
                "torch_ms_per_batch": 523.0,
                "onnx_ms_per_batch": 1.0,
                "onnx_images_per_s": 1000,
                "speedup": 523.0,
                "max_abs_diff": 1e-7,
                "noisy": True,
            }
        ],
        "machine": {"cpu": "cpu", "cores": 2, "memory_gb": 1},
        "load_average": {"before": 2.2, "after": 2.5, "cores": 2, "busy": True},
        "dims": [8, 32],
        "student_dim": 8,
    }
    rows = headline_rows(results)
    assert rows[0][4:6] == ["1.00", "1.0x"] and rows[1][4:6] == [f"523.00{MARK}", f"523.0x{MARK}"]
    text = markdown(results)
    assert f"| 523.00{MARK} | 1.00{MARK} | 1000 | 523.00x{MARK} |" in text
    assert "1 of 1 timed rows are marked" in text and "the machine was busy before the run" in text
    print_headline(results)
    assert "1 of 1 timed rows marked *" in capsys.readouterr().out


def test_the_run_with_teachers_is_chosen_and_named(trained_run, tmp_path):
    import shutil
    import time

    from s2sd_deploy.bench.latency import choose_run

    assert choose_run(tmp_path / "none")[0] is None
    runs = tmp_path / "runs"
    for name, s2sd in (("with-teachers", True), ("baseline", False)):
        (runs / name).mkdir(parents=True)
        meta = json.loads((trained_run / "config.json").read_text())
        meta["config"]["s2sd"] = s2sd
        (runs / name / "config.json").write_text(json.dumps(meta))
        shutil.copy(trained_run / "summary.json", runs / name)
        time.sleep(0.02)  # the baseline is the newest
    run, why = choose_run(runs)
    assert run.path.name == "with-teachers" and "the newest finished run with teacher heads" in why
    shutil.rmtree(runs / "with-teachers")
    run, why = choose_run(runs)
    assert run.path.name == "baseline" and "which has no teacher heads" in why and "pass --run" in why
