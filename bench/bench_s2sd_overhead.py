"""What S2SD adds to training time: the objective against its floor (goal: at most 1.2x), and a full step.

Usage:  .venv/bin/python bench/bench_s2sd_overhead.py [--batch 112] [--no-step]
Writes bench/results/s2sd_overhead.json and .md with the command and the machine.
"""

from __future__ import annotations

import argparse
import sys

from s2sd_deploy.checkpoint import write_json_atomic, write_text_atomic
from s2sd_deploy.train_bench import OverheadConfig, run_overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=112)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="rounds of floor and objective per criterion")
    parser.add_argument("--no-step", action="store_true", help="only the objective, not the full resnet50 step")
    parser.add_argument("--out", default="bench/results/s2sd_overhead")
    args = parser.parse_args()
    cfg = OverheadConfig(batch=args.batch, image_size=args.image_size, step_repeats=args.step_repeats, loss_repeats=args.rounds)
    result = run_overhead(cfg, with_step=not args.no_step)
    result["command"] = "python " + " ".join(sys.argv)
    write_json_atomic(args.out + ".json", result)
    lines = ["# S2SD training overhead", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch threads {result['machine']['torch_threads']}", "",
             f"The S2SD objective (student + teacher heads, one criterion per head, relational and feature distillation; "
             f"forward + backward) against its floor, the teacher MLPs' own forward + backward, on fixed features: "
             f"B={cfg.batch}, d={cfg.embed_dim}, F={cfg.feature_dim}, teachers {cfg.target_dims}; timed in turn, medians. "
             f"Goal: at most 1.2x.", "",
             "| criterion | floor ms | objective ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['criterion']} | {r['floor_ms']:.1f} | {r['objective_ms']:.1f} | {r['ratio']:.2f}x |" for r in result["objective"]]
    if "step" in result:
        step = result["step"]
        lines += ["", f"Full training step, {cfg.backbone} at {cfg.image_size} px, batch {cfg.batch}, Adam: plain {step['plain_s']:.2f} s, "
                      f"S2SD {step['s2sd_s']:.2f} s: S2SD adds {100 * step['overhead']:.1f}% (goal: at most 10%)."]
    write_text_atomic(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
