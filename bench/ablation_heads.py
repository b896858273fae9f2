"""Recall@1 of the student and of every teacher head in the ablation's test runs: are the teachers
the problem when a distilled student does not beat the baseline?

Usage:  .venv/bin/python bench/ablation_heads.py [--runs-dir runs/ablation/test] [--out bench/results/ablation]
Run after bench/ablation.py. Writes heads_recall.json and heads_recall.md (mean ± sample std over seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s2sd_deploy.atomic_files import write_json_atomic, write_text_atomic
from s2sd_deploy.bench.ablation import heads_markdown, heads_recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/ablation/test")
    parser.add_argument("--out", default="bench/results/ablation")
    args = parser.parse_args()
    results = heads_recall(Path(args.runs_dir))
    out = Path(args.out)
    write_json_atomic(out / "heads_recall.json", results)
    write_text_atomic(out / "heads_recall.md", heads_markdown(results, "python " + " ".join(sys.argv)))


if __name__ == "__main__":
    main()
