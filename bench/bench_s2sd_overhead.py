"""What S2SD adds to training time: the objective against its floor (goal: at most 1.2x), and a full step.

Usage:  .venv/bin/python bench/bench_s2sd_overhead.py [--batch 112] [--no-step]
Writes bench/results/s2sd_overhead.json and .md with the command and the machine.
"""

from __future__ import annotations

import argparse
import sys

from s2sd_deploy.atomic_files import write_json_atomic, write_text_atomic
from s2sd_deploy.bench.overhead import OverheadConfig, markdown, run_overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of floor and objective per criterion")
    parser.add_argument("--no-step", action="store_true", help="only the objective, not the full resnet50 step")
    parser.add_argument("--out", default="bench/results/s2sd_overhead")
    args = parser.parse_args()
    cfg = OverheadConfig(
        batch=args.batch, image_size=args.image_size, step_repeats=args.step_repeats, loss_repeats=args.rounds
    )
    result = run_overhead(cfg, with_step=not args.no_step)
    result["command"] = "python " + " ".join(sys.argv)
    write_json_atomic(args.out + ".json", result)
    text = markdown(result)
    write_text_atomic(args.out + ".md", text)
    print(text)


if __name__ == "__main__":
    main()
