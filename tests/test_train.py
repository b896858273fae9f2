"""End-to-end training: run directory, SIGKILL + resume, torchrun with 2 processes, NaN stop, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from s2sd_deploy.errors import S2SDError, TrainingDiverged
from s2sd_deploy.training.config import build_train_config
from s2sd_deploy.training.losses import S2SDLoss
from s2sd_deploy.training.run_dir import RunDir
from s2sd_deploy.training.trainer import Trainer, resume, train

# Small enough for seconds per epoch on one core: 16 px digits, 10 images per class and batch.
FAST = [
    "--dataset",
    "digits",
    "--no-eval-untrained",
    "--image-size",
    "16",
    "--resize-size",
    "18",
    "--batch-size",
    "20",
    "--samples-per-class",
    "4",
    "--target-dims",
    "32,64",
    "--embed-dim",
    "8",
    "--feature-delay",
    "5",
]
FAST_DICT = dict(
    dataset="digits",
    eval_untrained=False,
    image_size=16,
    resize_size=18,
    batch_size=20,
    samples_per_class=4,
    target_dims=[32, 64],
    embed_dim=8,
    feature_delay=5,
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def s2sd(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("s2sd")), *args],  # the real console script
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_run_directory_contents(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "config.json",
        "best.safetensors",
        "last.safetensors",
        "metrics.jsonl",
        "summary.json",
        "curves.png",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    meta = json.loads((trained_run / "config.json").read_text())
    assert meta["config"]["target_dims"] == [64, 128] and len(meta["dataset_fingerprint"]) == 16
    assert meta["package_version"] and meta["config_hash"]
    keys = load_file(str(trained_run / "best.safetensors")).keys()
    assert {k.split(".")[0] for k in keys} == {"backbone", "student", "teachers", "optimizer"}
    summary = json.loads((trained_run / "summary.json").read_text())
    assert 0 < summary["final"]["recall@1"] <= 1 and summary["peak_memory_mb"] > 0
    # No validation classes: the shipped checkpoint is the last epoch's; the best test epoch is reported, not shipped.
    assert summary["evaluated_on"] == "test" and summary["shipped"]["checkpoint"] == "last.safetensors"
    assert summary["shipped"]["epoch"] == 1 and "last epoch" in summary["shipped"]["rule"]
    assert summary["best_test_epoch_paper_protocol"]["epoch"] == 1
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["epoch"] == 1 and "recall@1" in rows[1] and rows[1]["distill"] >= 0


def _digest(path: Path) -> dict[str, str]:
    return {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in load_file(str(path)).items()}


def wait_for(condition, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(0.05)
    assert condition(), "timed out"


def epochs_written(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return metrics.read_text().count("\n") if metrics.exists() else 0


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Killed in epoch 2, and killed in its first epoch (then left with the temporary file of an interrupted
    checkpoint write), both runs resume to the weights of an uninterrupted run and leave no temporary file."""
    common = [*FAST, "--epochs", "2", "--out-dir", str(tmp_path), "--seed", "7"]
    reference = s2sd("train", *common, "--run-name", "whole")
    late, early = s2sd("train", *common, "--run-name", "late"), s2sd("train", *common, "--run-name", "early")
    wait_for(lambda: (tmp_path / "early" / "config.json").exists())
    early.send_signal(signal.SIGKILL)  # during the first epoch: nothing completed
    wait_for(lambda: epochs_written(tmp_path / "late") >= 1)
    first_epoch = json.loads((tmp_path / "late" / "metrics.jsonl").read_text().splitlines()[0])
    time.sleep(0.3 * first_epoch["elapsed_s"] / 2)  # well inside epoch 2
    late.send_signal(signal.SIGKILL)
    for killed, name in ((early, "early"), (late, "late")):
        killed.wait()
        assert killed.returncode == -signal.SIGKILL and not (tmp_path / name / "summary.json").exists()
    assert not (tmp_path / "early" / "last.safetensors").exists(), "the first epoch completed before the kill"
    # What a kill during a checkpoint write leaves: the complete old file and the temporary new one.
    (tmp_path / "early" / ".last.safetensors.k1ll3d.tmp").write_bytes(b"\0" * 4096)
    for name in ("late", "early"):
        resumed = s2sd("train", "--resume", str(tmp_path / name))
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
    assert reference.wait(timeout=300) == 0
    for name in ("late", "early"):
        assert _digest(tmp_path / name / "last.safetensors") == _digest(tmp_path / "whole" / "last.safetensors")
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in rows] == [1, 2]
        assert not list((tmp_path / name).glob("*.tmp")) and not list((tmp_path / name).glob(".*.tmp"))
    late_rows = [json.loads(line) for line in (tmp_path / "late" / "metrics.jsonl").read_text().splitlines()]
    whole_rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    # Time keeps counting across the resume: the resumed epoch 2 ends after epoch 1 by more than the
    # uninterrupted run's epoch 2 took (it also pays the kill and a second start-up).
    epoch_2 = whole_rows[1]["elapsed_s"] - whole_rows[0]["elapsed_s"]
    assert late_rows[1]["elapsed_s"] - late_rows[0]["elapsed_s"] >= 0.5 * epoch_2
    summary = json.loads((tmp_path / "late" / "summary.json").read_text())
    assert summary["wall_time_s"] >= late_rows[1]["elapsed_s"]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path):
    process = s2sd("train", *FAST, "--epochs", "20", "--out-dir", str(tmp_path), "--run-name", "stopped")
    wait_for(lambda: epochs_written(tmp_path / "stopped") >= 1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: interrupted: every completed epoch is saved; continue with: s2sd train --resume {tmp_path / 'stopped'}"
    ], err
    assert "Traceback" not in err


def test_a_run_in_use_is_refused(tmp_path):
    busy = RunDir(tmp_path / "busy")
    busy.claim()  # this test process holds it, as another s2sd train would
    try:
        process = s2sd("train", *FAST, "--out-dir", str(tmp_path), "--run-name", "busy")
        _, err = process.communicate(timeout=300)
    finally:
        busy.release()
    assert process.returncode == 2
    assert err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'busy'} is in use by another s2sd train (pid "
        f"{os.getpid()}); wait for it to finish, or choose another --run-name"
    )
    assert not (tmp_path / "busy" / "config.json").exists()


def test_a_run_without_a_completed_epoch_is_replaced_or_started_over(tmp_path):
    cfg = build_train_config({**FAST_DICT, "epochs": 1, "out_dir": str(tmp_path), "run_name": "fresh"})
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": "s2sd-run/2", "config": cfg.to_dict()}))
    (run / ".config.json.abc.tmp").write_text("left by a killed write")
    assert train(cfg)["epochs"] == 1  # no epoch had completed: replaced, and the leftover cleared
    assert not list(run.glob(".*.tmp"))
    for name in ("last.safetensors", "best.safetensors", "summary.json", "metrics.jsonl"):
        (run / name).unlink()
    summary = resume(run)  # no epoch completed: --resume starts it over
    assert summary["epochs"] == 1 and (run / "last.safetensors").is_file()


def test_a_damaged_best_checkpoint_stops_the_resume(tmp_path):
    cfg = build_train_config({**FAST_DICT, "epochs": 1, "out_dir": str(tmp_path), "run_name": "damaged"})
    train(cfg)
    best = tmp_path / "damaged" / "best.safetensors"
    best.write_bytes(best.read_bytes()[:100])
    with pytest.raises(S2SDError, match="best.safetensors is not a readable safetensors checkpoint.*delete it"):
        resume(tmp_path / "damaged", epochs=2)
    best.unlink()
    summary = resume(tmp_path / "damaged", epochs=2)
    assert summary["best_test_epoch_paper_protocol"]["epoch"] == 2 and best.is_file()


def test_a_validated_run_without_best_and_no_epochs_left_is_refused(tmp_path):
    cfg = build_train_config(
        {**FAST_DICT, "epochs": 1, "validation_classes": 2, "batch_size": 12, "out_dir": str(tmp_path), "run_name": "v"}
    )
    train(cfg)
    (tmp_path / "v" / "best.safetensors").unlink()
    with pytest.raises(S2SDError, match="best.safetensors is missing and no epochs remain.*--epochs 2 or more"):
        resume(tmp_path / "v")
    summary = resume(tmp_path / "v", epochs=2)
    assert summary["shipped"]["epoch"] == 2 and (tmp_path / "v" / "best.safetensors").is_file()


def test_files_follow_the_umask(tmp_path):
    code = "from s2sd_deploy.atomic_files import write_text_atomic; import sys; write_text_atomic(sys.argv[1], 'x')"
    for umask, mode in (("022", 0o644), ("027", 0o640)):
        target = tmp_path / f"file-{umask}"
        subprocess.run(
            ["sh", "-c", f'umask {umask} && "$0" -c "$1" "$2"', sys.executable, code, str(target)],
            check=True,
            timeout=60,
        )
        assert target.stat().st_mode & 0o777 == mode


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "s2sd_deploy.cli",
            "train",
            *FAST,
            "--epochs",
            "1",
            "--out-dir",
            str(tmp_path),
            "--run-name",
            "ddp",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final"]["recall@1"] > 0
    assert result.stdout.count("run: ") == 1  # only rank 0 reports
    assert not [p for p in (tmp_path / "ddp").iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = build_train_config({**FAST_DICT, "epochs": 3, "out_dir": str(tmp_path), "run_name": "nan"})
    trainer = Trainer(cfg, RunDir(tmp_path / "nan"))
    steps_per_epoch = len(trainer.sampler)
    poison_step = steps_per_epoch + 2  # third batch of epoch 2
    original = S2SDLoss.forward

    def forward(self, output, labels, step):
        result = original(self, output, labels, step)
        if step == poison_step:
            result.total = result.total * float("nan")
        return result

    monkeypatch.setattr(S2SDLoss, "forward", forward)
    last = tmp_path / "nan" / "last.safetensors"
    with pytest.raises(TrainingDiverged, match=f"at step {poison_step} \\(epoch 2, batch 3\\)") as error:
        trainer.fit()
    assert str(last) in str(error.value)
    with safe_open(str(last), "pt") as handle:
        assert json.loads(handle.metadata()["training_state"])["state"]["epoch"] == 1


def test_cli_prints_recall_nmi_and_run_path(tmp_path):
    process = s2sd("train", *FAST, "--epochs", "1", "--out-dir", str(tmp_path), "--run-name", "cli", "--no-s2sd")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "Recall@1 " in out and "NMI " in out and f"run: {tmp_path / 'cli'}" in out
    meta = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert meta["config"]["s2sd"] is False
    assert not any(k.startswith("teachers.") for k in load_file(str(tmp_path / "cli" / "best.safetensors")))


def test_cli_bad_option_is_one_line(tmp_path):
    process = s2sd("train", "--criterion", "arcface", "--out-dir", str(tmp_path))
    out, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert err.strip().splitlines() == [
        "error: invalid --criterion 'arcface'; choose one of: multisimilarity, margin, triplet"
    ]


def test_existing_run_is_not_overwritten(trained_run):
    cfg = build_train_config({"out_dir": str(trained_run.parent), "run_name": trained_run.name})
    with pytest.raises(Exception, match="already holds a run; pass --resume"):
        train(cfg)


def test_missing_cuda_is_refused_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    process = s2sd("train", "--device", "cuda", "--out-dir", str(tmp_path))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_validation_run_ships_the_best_validation_epoch_and_tests_it_once(tmp_path):
    cfg = build_train_config(
        {
            **FAST_DICT,
            "epochs": 2,
            "validation_classes": 2,
            "batch_size": 12,
            "samples_per_class": 4,
            "out_dir": str(tmp_path),
            "run_name": "val",
        }
    )
    summary = train(cfg)
    assert summary["evaluated_on"] == "validation" and "best_test_epoch_paper_protocol" not in summary
    best = summary["best_validation_epoch"]
    assert summary["shipped"]["checkpoint"] == "best.safetensors" and summary["shipped"]["epoch"] == best["epoch"]
    assert "validation" in summary["shipped"]["rule"]
    test_metrics = summary["shipped"]["test_metrics"]  # the shipped weights, on the 5 unseen test digits
    assert set(test_metrics) >= {"recall@1", "nmi", "map@r"} and test_metrics != best["metrics"]


def test_amp_on_a_cpu_is_refused_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    process = s2sd("train", "--amp", "--device", "cpu", "--out-dir", str(tmp_path))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 3 and err.strip().splitlines() == [
        "error: --amp needs a CUDA GPU (mixed precision runs on the GPU only); this run is on cpu: drop --amp"
    ]


def test_resume_with_more_epochs_extends_the_run(tmp_path):
    cfg = build_train_config({**FAST_DICT, "epochs": 1, "out_dir": str(tmp_path), "run_name": "short"})
    train(cfg)
    summary = resume(tmp_path / "short", epochs=2)
    assert summary["epochs"] == 2 and summary["shipped"]["epoch"] == 2
    config = json.loads((tmp_path / "short" / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["config_hash"] == RunDir(tmp_path / "short").config.hash()
    assert [json.loads(line)["epoch"] for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]


def test_the_untrained_network_is_epoch_0(trained_run):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1] and "loss" not in rows[0] and rows[0]["recall@1"] > 0
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["untrained"]["recall@1"] == rows[0]["recall@1"]
    assert summary["best_test_epoch_paper_protocol"]["epoch"] >= 1  # epoch 0 is reported, never chosen
