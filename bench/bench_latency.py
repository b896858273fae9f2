"""Record `s2sd bench-latency` into bench/results/ (same options as the command).

Usage:
  .venv/bin/python bench/bench_latency.py --out bench/results/latency-default
  .venv/bin/python bench/bench_latency.py --run runs/glyphs-default --out bench/results/latency-glyphs
"""

import sys

from s2sd_deploy.cli import main

if __name__ == "__main__":
    sys.argv = ["s2sd", "bench-latency", *sys.argv[1:]]  # so results record the equivalent s2sd command
    main(sys.argv[1:])
