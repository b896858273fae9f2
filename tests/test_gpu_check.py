"""bench/gpu_check.sh: its steps run independently and are judged by what they wrote; on this CPU machine the
whole check runs at --quick sizes, with the GPU-only steps reported absent, so it cannot rot before a GPU comes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s2sd_deploy.bench import gpu_check, gpu_check_probes, gpu_check_report
from s2sd_deploy.bench.gpu_check import Step, run_step, shown

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def python_step(name: str, code: str, timeout_s: float = 30, **options) -> Step:
    return Step(name, "a test step", [sys.executable, "-c", code], timeout_s, **options)


def test_a_failing_step_is_recorded_and_the_next_still_runs(tmp_path):
    def steps_run(steps, seconds=60.0):
        deadline = time.monotonic() + seconds
        return [run_step(step, n, tmp_path, dict(os.environ), deadline, lambda _: None) for n, step in enumerate(steps)]

    failing = python_step("fails", "import sys; print('something broke', file=sys.stderr); sys.exit(5)")
    missing = python_step("missing", "import sys; print('error: no GPU here'); sys.exit(3)")
    slow = python_step("hangs", "import time; time.sleep(30)", timeout_s=1)
    writes = python_step(
        "writes",
        "open('figures.json', 'w').write('{\"x\": 1}')",
        collect=lambda out: gpu_check.read(out / "figures.json"),
    )
    needs = python_step("needs", "pass", needs=str(tmp_path / "nowhere"))
    absent = python_step("absent", "pass", absent="needs a CUDA GPU")
    no_package = python_step("no package", "pass", requires="no_such_package_s2sd")
    records = steps_run([failing, missing, slow, writes, needs, absent, no_package])
    by_name = {r["name"]: r for r in records}
    assert by_name["fails"]["status"] == "failed" and by_name["fails"]["reason"] == "exit 5: something broke"
    assert by_name["missing"]["status"] == "absent" and by_name["missing"]["reason"] == "error: no GPU here"
    assert (
        by_name["hangs"]["status"] == "timeout" and by_name["hangs"]["seconds"] < 25
    )  # ended, not left to sleep its 30 s
    assert by_name["writes"]["status"] == "ok" and by_name["writes"]["figures"] == {"x": 1}
    assert by_name["needs"]["status"] == "skipped" and "nowhere" in by_name["needs"]["reason"]
    assert by_name["absent"] == {**by_name["absent"], "status": "absent", "reason": "needs a CUDA GPU"}
    assert by_name["no package"]["status"] == "absent" and "no_such_package_s2sd" in by_name["no package"]["reason"]
    assert (tmp_path / "logs" / "00-fails.log").read_text().strip() == "something broke"
    assert steps_run([python_step("late", "pass")], seconds=1)[0]["status"] == "skipped"  # the budget is used up


def test_commands_are_shown_as_typed():
    assert shown([sys.executable, "-m", "s2sd_deploy.cli", "train", "--amp"]) == "s2sd train --amp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "s2sd_deploy.cli"]
    assert shown(torchrun) == "torchrun --nproc_per_node 1 -m s2sd_deploy.cli"
    assert shown(["/usr/bin/python3", "-c", "pass"]) == "python3 -c pass"


def reference_entry(python: str, torch: str, recalls: list[float], losses: list[float]) -> dict:
    figures = {"recall@1_by_epoch": recalls, "loss_by_epoch": losses, "dataset_fingerprint": "abc"}
    return {"environment": {"python": python, "torch": torch}, "figures": figures}


def test_training_is_compared_with_the_cpu_reference_of_the_same_python_and_torch():
    reference = {
        "references": [
            reference_entry("3.11.7", "2.14.1", [0.40, 0.50], [3.0, 2.0]),
            reference_entry("3.12.1", "2.11.0", [0.42, 0.52], [3.1, 2.1]),
        ]
    }
    environment = {"python": "3.12.3", "torch": {"version": "2.11.0+cu130"}}
    assert gpu_check_report.pick_reference(reference, environment)["environment"]["torch"] == "2.11.0"
    assert (
        gpu_check_report.pick_reference(reference, {"python": "3.13.0", "torch": {"version": "2.9.0"}})
        == (reference["references"][0])
    )
    close = {"recall@1": 0.53, "loss_by_epoch": [3.0, 2.15], "dataset_fingerprint": "abc"}
    row = gpu_check_report.compare(close, reference["references"][1], epoch=2)
    assert row["recall_delta"] == pytest.approx(0.01) and row["loss_delta_relative"] == pytest.approx(2.15 / 2.1 - 1)
    assert row["consistent"] and row["same_dataset"]
    first_epoch = gpu_check_report.compare({**close, "recall@1": 0.30}, reference["references"][1], epoch=1)
    assert first_epoch["reference_recall@1"] == 0.42 and not first_epoch["consistent"]  # 0.12 below
    assert not gpu_check_report.compare({**close, "loss_by_epoch": [3.0, 2.3]}, reference["references"][1], 2)[
        "consistent"
    ]  # the loss 9.5% above
    other_data = gpu_check_report.compare({**close, "dataset_fingerprint": "xyz"}, reference["references"][1], 2)
    assert not other_data["same_dataset"] and not other_data["consistent"]


def test_versions_that_differ_from_the_pinned_ones_are_named(monkeypatch):
    monkeypatch.setattr(gpu_check_probes, "version", lambda package: {"torchvision": "0.26.0+cu130"}.get(package))
    monkeypatch.setattr(gpu_check_probes.platform, "python_version_tuple", lambda: ("3", "12", "3"))
    assert gpu_check_probes.differs_from_pinned("2.11.0+cu130") == [
        "torch 2.11.0 (pinned 2.14.1)",
        "torchvision 0.26.0 (pinned 0.29.1)",
        "python 3.12 (pinned 3.11)",
    ]


def test_the_torch_apis_the_product_calls_exist_in_the_pinned_torch():
    api = gpu_check_probes.torch_api()
    assert len(api) == 11
    assert {name: state for name, state in api.items() if state != "ok" and "nccl" not in name} == {}


def test_the_summary_is_written_whatever_the_steps_left(tmp_path):
    results = {
        "format": gpu_check.FORMAT,
        "config": {"out": str(tmp_path), "device": "gpu", "quick": False, "install": True, "budget_s": 450.0},
        "device": "gpu",
        "device_reason": "--device gpu",
        "started": "2026-11-29T00:00:00+00:00",
        "steps": [
            {
                "name": "environment",
                "status": "failed",
                "reason": "exit 1: ImportError",
                "seconds": 1.0,
                "command": "x",
            },
            {"name": "train fp32 (cuda)", "status": "timeout", "reason": "killed after 150 s", "command": "s2sd train"},
            {"name": "export --engine trt", "status": "absent", "reason": "no | tensorrt", "command": "s2sd export"},
        ],
    }
    gpu_check.write(results, tmp_path)
    summary = (tmp_path / gpu_check.SUMMARY).read_text()
    assert "The environment step did not report." in summary and "| 2 | train fp32 (cuda) | **timeout** |" in summary
    assert "no / tensorrt" in summary  # a reason cannot break the table
    assert json.loads((tmp_path / gpu_check.RESULTS).read_text())["checks"]["counts"] == {
        "failed": 1,
        "timeout": 1,
        "absent": 1,
    }


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=ENV, capture_output=True, text=True, cwd=cwd, timeout=600)


def test_bad_options_and_folders_get_one_line(tmp_path):
    result = check(str(tmp_path / "c"), "--device", "tpu")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: invalid --device 'tpu'; choose one of: auto, cpu, gpu"
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = check(str(tmp_path / "mine"), "--device", "cpu")
    assert result.returncode == 2 and "is a folder that is not a GPU check's output" in result.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / gpu_check.RESULTS).write_text("{}")
    result = check(str(tmp_path / "earlier"), "--device", "cpu")
    assert result.returncode == 2 and "already holds a GPU check's output; pass --force" in result.stderr


def test_gpu_is_refused_in_one_line_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    result = check(str(tmp_path / "c"), "--device", "gpu")
    assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1
    assert "--device gpu: torch sees no CUDA GPU" in result.stderr and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_the_quick_check_runs_every_cpu_step_and_reports_the_gpu_ones_absent(tmp_path):
    out = tmp_path / "check"
    result = check(str(out), "--device", "auto", "--quick", "--no-install", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / gpu_check.RESULTS).read_text())
    steps = {s["name"]: s for s in results["steps"]}
    assert results["device"] == "cpu" and results["device_reason"] == "auto: torch sees no CUDA GPU"
    assert [s["status"] for s in steps.values()] == ["ok", "ok", "absent", "ok", "ok", "ok", "ok", "absent"]
    assert steps["train --amp (cuda)"]["reason"].startswith("needs a CUDA GPU")
    assert steps["train fp32 (cpu)"]["figures"]["device"] == "cpu"
    # torchrun with one process trains through DDP over gloo, the same batches as the plain run, to the last bit
    assert results["checks"]["ddp_vs_single_process"] == {
        **results["checks"]["ddp_vs_single_process"],
        "backend": "gloo",
        "world_size": 1,
        "identical": True,
    }
    parity = steps["export + parity"]["figures"]["parity"]["embeddings"]
    assert parity["passed"] and parity["images"] == 16
    latency = steps["bench-latency --device cpu"]["figures"]
    assert {(c["dim"], c["batch"]) for c in latency["contrast"]} == {(8, 1), (8, 8), (64, 1), (64, 8)}
    providers = steps["Embedder providers"]["figures"]["providers"]
    assert providers["CPUExecutionProvider"]["status"] == "ok"
    assert providers["CPUExecutionProvider"]["parity_vs_torch"]["fp32"]["max_abs_diff"] <= 1e-5
    assert providers["CUDAExecutionProvider"]["status"] == "absent"  # the CPU build of onnxruntime
    assert "tensorrt package is not installed" in steps["export --engine trt"]["reason"]
    assert all("seconds" in s for s in steps.values())
    summary = (out / gpu_check.SUMMARY).read_text()
    assert all(f"| {name} |" in summary for name in steps) and "identical." in summary
