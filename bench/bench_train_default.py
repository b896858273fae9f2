"""Time `s2sd train` with no arguments (targets: < 3 minutes on 2 cores, < 2 GB peak memory, Recall@1 at least
20 points above the untrained network's, the best epoch not the first).

Usage:  .venv/bin/python bench/bench_train_default.py [--out bench/results/train_default.json] [--keep runs]

Runs the real command in a subprocess from an empty glyphs cache, so start-up, imports and rendering the dataset
count, and records its summary.json and per-epoch metrics beside the outer wall time. --keep leaves the run
(named glyphs-default) in that folder for the other benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
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
    parser.add_argument("--keep", help="folder to leave the run in (as glyphs-default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs = args.keep or scratch
        started = time.perf_counter()
        console = str(Path(sys.executable).with_name("s2sd"))
        subprocess.run(
            [console, "train", "--out-dir", runs, "--run-name", "glyphs-default"],
            check=True,
            env={**os.environ, "S2SD_CACHE_DIR": str(Path(scratch) / "cache")},
        )
        outer = time.perf_counter() - started
        run = Path(runs) / "glyphs-default"
        summary = json.loads((run / "summary.json").read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [{"epoch": row["epoch"], "recall@1": row["recall@1"]} for row in metrics if "recall@1" in row]
    gain = summary["final"]["recall@1"] - summary["untrained"]["recall@1"]
    best_epoch = summary["best_test_epoch_paper_protocol"]["epoch"]
    result = {
        "command": "s2sd train",
        "bench_command": " ".join([Path(sys.executable).name, *sys.argv]),
        "outer_wall_time_s": round(outer, 1),
        "target": {
            "wall_time_s": 180,
            "peak_memory_mb": 2048,
            "recall@1_gain_points": 20,
            "best_epoch": "not the first",
        },
        "measured": {
            "recall@1_untrained": summary["untrained"]["recall@1"],
            "recall@1_final": summary["final"]["recall@1"],
            "recall@1_gain_points": round(100 * gain, 2),
            "best_epoch": best_epoch,
            "peak_memory_mb": summary["peak_memory_mb"],
        },
        "curve": curve,
        "summary": summary,
        "machine": machine_info(),
    }
    write_json_atomic(args.out, result)
    print(json.dumps({k: result[k] for k in ("outer_wall_time_s", "target", "measured", "curve")}, indent=1))


if __name__ == "__main__":
    main()
