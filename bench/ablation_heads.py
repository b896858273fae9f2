"""Recall@1 of the student and of every teacher head in the ablation's test runs: are the teachers
the problem when a distilled student does not beat the baseline?

Usage:  .venv/bin/python bench/ablation_heads.py [--runs-dir runs/ablation/test] [--out bench/results/ablation]
Run after bench/ablation.py. Writes heads_recall.json and heads_recall.md (mean ± sample std over seeds).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from s2sd_deploy.checkpoint import write_json_atomic, write_text_atomic
from s2sd_deploy.data import splits_for
from s2sd_deploy.evaluation import evaluate_heads
from s2sd_deploy.rundir import load_trained_model

RUN_NAME = re.compile(r"d(?P<dim>\d+)-(?P<arm>\w+)-lr(?P<lr>[^-]+)-seed(?P<seed>\d+)")


def heads_recall(runs_dir: Path) -> dict[str, dict[str, float]]:
    """Run name -> head name -> test Recall@1, for every finished run under ``runs_dir``."""
    results = {}
    for run_dir in sorted(p for p in runs_dir.iterdir() if RUN_NAME.fullmatch(p.name) and (p / "best.safetensors").exists()):
        model, run, _ = load_trained_model(run_dir)
        _, test = splits_for(run.config)
        results[run_dir.name] = {head: m["recall@1"] for head, m in evaluate_heads(model, test, run.config).items()}
        print(run_dir.name, results[run_dir.name], flush=True)
    return results


def markdown(results: dict[str, dict[str, float]], command: str) -> str:
    grouped = defaultdict(lambda: defaultdict(list))  # (dim, arm, lr) -> head -> recalls over seeds
    for name, heads in results.items():
        match = RUN_NAME.fullmatch(name)
        for head, recall in heads.items():
            grouped[(int(match["dim"]), match["arm"], match["lr"])][head].append(recall)
    lines = ["# Student and teacher heads in the ablation's test runs", "", f"Command: `{command}`", "",
             "Recall@1 % on unseen digits 5-9, mean ± sample std over seeds (as in results.md).", "",
             "| dim | arm | lr | head | Recall@1 |", "|---|---|---|---|---|"]
    for (dim, arm, lr), heads in sorted(grouped.items()):
        for head, values in heads.items():
            lines.append(f"| {dim} | {arm} | {lr} | {head} | {100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/ablation/test")
    parser.add_argument("--out", default="bench/results/ablation")
    args = parser.parse_args()
    results = heads_recall(Path(args.runs_dir))
    out = Path(args.out)
    write_json_atomic(out / "heads_recall.json", results)
    write_text_atomic(out / "heads_recall.md", markdown(results, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
