"""S2SD ablation on the bundled glyphs: baseline / DSD / MSD / MSDF / MSDFA x student dims x seeds, the same budget
per arm, each arm at its own learning rate chosen on held-out training classes, every head evaluated.

Usage:  .venv/bin/python bench/ablation.py [--dims 16,64] [--seeds 0,1,2,3,4] [--arms baseline,dsd,msdfa]
                                           [--lrs 3e-4,1e-3,3e-3] [--selection-seeds 0] [--epochs N]
Writes bench/results/ablation/{results.json, results.md, ablation.png}; runs go to runs/ablation/ (finished runs
are reused, so an interrupted ablation continues, and two processes with disjoint --dims can share the work).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from s2sd_deploy.bench.ablation import AblationConfig, run_ablation, write_ablation


def numbers(text: str, kind=int) -> list:
    return [kind(part) for part in text.split(",") if part]


def main() -> None:
    defaults = AblationConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=defaults.dataset)
    parser.add_argument("--dims", default=",".join(map(str, defaults.dims)))
    parser.add_argument("--seeds", default=",".join(map(str, defaults.seeds)))
    parser.add_argument("--arms", default=",".join(defaults.arms))
    parser.add_argument(
        "--lrs", default=",".join(f"{lr:g}" for lr in defaults.lrs), help="the grid each arm picks from"
    )
    parser.add_argument("--selection-seeds", default=",".join(map(str, defaults.selection_seeds)))
    parser.add_argument("--validation-classes", type=int, default=defaults.validation_classes)
    parser.add_argument("--epochs", type=int, default=None, help="default: the dataset preset's")
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--runs-dir", default=defaults.runs_dir)
    args = parser.parse_args()
    cfg = AblationConfig(
        dataset=args.dataset,
        dims=numbers(args.dims),
        seeds=numbers(args.seeds),
        arms=args.arms.split(","),
        lrs=numbers(args.lrs, float),
        selection_seeds=numbers(args.selection_seeds),
        validation_classes=args.validation_classes,
        epochs=args.epochs,
        out=args.out,
        runs_dir=args.runs_dir,
    )
    started = time.time()
    results = run_ablation(cfg)
    results["command"] = "python " + " ".join(sys.argv)
    results["wall_time_s"] = round(time.time() - started, 1)  # this process only: reused runs cost it nothing
    write_ablation(results, Path(cfg.out))


if __name__ == "__main__":
    main()
