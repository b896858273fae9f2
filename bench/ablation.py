"""S2SD ablation on digits: baseline / DSD / MSD / MSDF / MSDFA x dims x seeds, same budget per arm,
each arm at its own learning rate chosen on held-out training digits.

Usage:  .venv/bin/python bench/ablation.py [--dims 8,32] [--seeds 0,1,2,3,4] [--epochs 6] [--arms ...]
                                           [--lrs 1e-4,3e-4,1e-3] [--selection-seeds 0,1,2]
Writes bench/results/ablation/{results.json, results.md, ablation.png}; runs go to runs/ablation/
(finished runs are reused, so an interrupted ablation continues).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s2sd_deploy.ablation import AblationConfig, run_ablation, write_ablation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="8,32")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--arms", default="baseline,dsd,msd,msdf,msdfa")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="learning-rate grid each arm chooses from")
    parser.add_argument("--selection-seeds", default="0,1,2", help="seeds of the validation runs per lr")
    parser.add_argument("--out", default="bench/results/ablation")
    parser.add_argument("--runs-dir", default="runs/ablation")
    args = parser.parse_args()
    cfg = AblationConfig(
        dims=[int(d) for d in args.dims.split(",")],
        seeds=[int(s) for s in args.seeds.split(",")],
        epochs=args.epochs,
        arms=args.arms.split(","),
        lrs=[float(v) for v in args.lrs.split(",")],
        selection_seeds=[int(s) for s in args.selection_seeds.split(",")],
        out=args.out,
        runs_dir=args.runs_dir,
    )
    results = run_ablation(cfg)
    results["command"] = "python " + " ".join(sys.argv)
    write_ablation(results, Path(cfg.out))


if __name__ == "__main__":
    main()
