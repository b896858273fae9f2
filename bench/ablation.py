"""S2SD ablation on digits: baseline / DSD / MSD / MSDF / MSDFA x dims x seeds, same budget per arm.

Usage:  .venv/bin/python bench/ablation.py [--dims 8,32] [--seeds 0,1,2,3,4] [--epochs 6] [--arms ...] [--lr 1e-4]
Writes bench/results/ablation/{results.json, results.md, ablation.png}; runs go to runs/ablation/
(finished runs are reused, so an interrupted ablation continues).
"""

from __future__ import annotations

import argparse
import sys

from s2sd_deploy.ablation import AblationConfig, run_ablation, write_ablation
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="8,32")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arms", default="baseline,dsd,msd,msdf,msdfa")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", default="bench/results/ablation")
    parser.add_argument("--runs-dir", default="runs/ablation")
    args = parser.parse_args()
    cfg = AblationConfig(dims=[int(d) for d in args.dims.split(",")], seeds=[int(s) for s in args.seeds.split(",")],
                         epochs=args.epochs, arms=args.arms.split(","), lr=args.lr, out=args.out, runs_dir=args.runs_dir)
    results = run_ablation(cfg)
    results["command"] = "python " + " ".join(sys.argv)
    write_ablation(results, Path(cfg.out))


if __name__ == "__main__":
    main()
