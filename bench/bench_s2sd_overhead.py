"""What S2SD adds to training time (issue goal: at most 10% of a full step).

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
    parser.add_argument("--no-step", action="store_true", help="only the loss, not the full resnet50 step")
    parser.add_argument("--out", default="bench/results/s2sd_overhead")
    args = parser.parse_args()
    cfg = OverheadConfig(batch=args.batch, image_size=args.image_size, step_repeats=args.step_repeats)
    result = run_overhead(cfg, with_step=not args.no_step)
    result["command"] = "python " + " ".join(sys.argv)
    write_json_atomic(args.out + ".json", result)
    loss = result["loss"]
    lines = ["# S2SD training overhead", "", f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch threads {result['machine']['torch_threads']}", "",
             f"Loss forward+backward, B={cfg.batch}, d={cfg.embed_dim}, F={cfg.feature_dim}, targets {cfg.target_dims}: "
             f"plain {loss['plain_ms']:.1f} ms, S2SD (teacher heads + criteria + distillation) {loss['s2sd_ms']:.1f} ms "
             f"(+{loss['added_ms']:.1f} ms)."]
    if "step" in result:
        step = result["step"]
        lines += ["", f"Full training step, {cfg.backbone} at {cfg.image_size} px, batch {cfg.batch}, Adam: plain {step['plain_s']:.2f} s, "
                      f"S2SD {step['s2sd_s']:.2f} s: S2SD adds {100 * step['overhead']:.1f}% (goal: at most 10%)."]
    write_text_atomic(args.out + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
