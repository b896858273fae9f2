"""Time `s2sd train` with no arguments (target: < 3 minutes on 2 cores, < 2 GB peak memory).

Usage:  .venv/bin/python bench/bench_train_default.py [--out bench/results/train_default.json]

Runs the real command in a subprocess, so start-up and imports count, and records its summary.json
(wall time and peak RSS as measured inside the run) beside the outer wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from s2sd_deploy.atomic_files import write_json_atomic
from s2sd_deploy.bench.machine import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/train_default.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "s2sd_deploy.cli", "train", "--out-dir", runs, "--run-name", "default"], check=True
        )
        outer = time.perf_counter() - started
        summary = json.loads((Path(runs) / "default" / "summary.json").read_text())
    result = {
        "command": "s2sd train",
        "bench_command": " ".join([Path(sys.executable).name, *sys.argv]),
        "outer_wall_time_s": round(outer, 1),
        "target": {"wall_time_s": 180, "peak_memory_mb": 2048},
        "summary": summary,
        "machine": machine_info(),
    }
    write_json_atomic(args.out, result)
    print(
        json.dumps({k: result[k] for k in ("outer_wall_time_s", "target")}), summary["final"], summary["peak_memory_mb"]
    )


if __name__ == "__main__":
    main()
