"""The CPU figures the GPU check compares its CUDA training with: the check's own training configuration, run on
this machine's CPU, recorded into bench/results/gpu_check_cpu_reference.json (one entry per Python, torch and
OMP_NUM_THREADS).

    python -m s2sd_deploy.bench.gpu_check reference [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from ..atomic_files import write_json_atomic
from .gpu_check import REFERENCE, TRAIN_FLAGS, read, run_figures
from .gpu_check_probes import version
from .machine import cpu_model

FORMAT = "s2sd-gpu-check-reference/1"


def record_reference(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m s2sd_deploy.bench.gpu_check reference", description=__doc__)
    parser.add_argument("--out", default=str(REFERENCE), help="the reference file (entries are merged into it)")
    args = parser.parse_args(argv)
    flags = [*TRAIN_FLAGS["full"], "--device", "cpu"]
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "s2sd_deploy.cli", "train", *flags, "--out-dir", scratch, "--run-name", "ref"]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - started
        figures = run_figures(Path(scratch) / "ref")
    entry = {
        "environment": {
            "python": platform.python_version(),
            "torch": (version("torch") or "").split("+")[0],
            "torchvision": (version("torchvision") or "").split("+")[0],
            "numpy": version("numpy"),
            "matplotlib": version("matplotlib"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": os.environ.get("OMP_NUM_THREADS"),
        },
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "figures": figures,
    }
    path = Path(args.out)
    reference = read(path) if path.is_file() else {}
    kept = [e for e in reference.get("references", []) if environment_key(e) != environment_key(entry)]
    reference = {
        "format": FORMAT,
        "configuration": ["s2sd", "train", *flags],
        "command": "python -m s2sd_deploy.bench.gpu_check reference  # " + shlex.join(["s2sd", "train", *flags]),
        "references": [*kept, entry],
    }
    write_json_atomic(path, reference)
    print(f"wrote {path}: Recall@1 {figures['recall@1']:.4f}, losses {figures['loss_by_epoch']}")
    return reference


def environment_key(entry: dict) -> tuple:
    """One reference per Python (major.minor), torch and thread count: each changes the figures."""
    environment = entry["environment"]
    return environment["python"].rsplit(".", 1)[0], environment["torch"], environment["threads"]
