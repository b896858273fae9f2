"""The S2SD ablation on the bundled digits: baseline, DSD, MSD, MSDF, MSDFA over seeds and dims.

Every arm gets the same budget (epochs, batches, learning rate, augmentation); only the S2SD
parts differ. Runs already finished in the output folder are reused, so an interrupted ablation
continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import write_json_atomic, write_text_atomic
from .plots import pyplot, save_figure

ARMS = {
    "baseline": {"s2sd": False},
    "dsd": {"variant": "dsd"},
    "msd": {"variant": "msd"},
    "msdf": {"variant": "msdf"},
    "msdfa": {"variant": "msdfa"},
}


@dataclass
class AblationConfig:
    """Options of bench/ablation.py; saved with the results."""

    dims: list[int] = field(default_factory=lambda: [8, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    epochs: int = 6  # same for every arm; ~11 steps per epoch on digits
    lr: float = 1e-4  # the digits preset, for every arm
    feature_delay: int = 30  # steps; the preset's 60 would start feature distillation late in 6 epochs
    out: str = "bench/results/ablation"
    runs_dir: str = "runs/ablation"


def run_ablation(cfg: AblationConfig, progress=print) -> dict:
    """Train every (dim, arm, seed) not trained yet, then aggregate and write the results."""
    from .config import build_train_config
    from .train import train

    records = []
    for dim in cfg.dims:
        for arm in cfg.arms:
            for seed in cfg.seeds:
                name = f"d{dim}-{arm}-seed{seed}"
                summary_path = Path(cfg.runs_dir) / name / "summary.json"
                if not summary_path.is_file():
                    overrides = {**ARMS[arm], "embed_dim": dim, "seed": seed, "epochs": cfg.epochs, "lr": cfg.lr,
                                 "feature_delay": cfg.feature_delay, "eval_every": cfg.epochs,
                                 "out_dir": cfg.runs_dir, "run_name": name}
                    train(build_train_config(overrides))
                final = json.loads(summary_path.read_text())["final"]
                records.append({"dim": dim, "arm": arm, "seed": seed, **final})
                progress(f"{name}: Recall@1 {final['recall@1']:.4f} NMI {final['nmi']:.4f}")
    table = aggregate(records)
    results = {"config": asdict(cfg), "runs": records, "table": table}
    write_ablation(results, Path(cfg.out))
    return results


def aggregate(records: list[dict], metrics=("recall@1", "nmi")) -> list[dict]:
    """Mean and (sample) standard deviation of each metric per (dim, arm), in input order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["dim"], record["arm"]), []).append(record)
    table = []
    for (dim, arm), members in groups.items():
        row = {"dim": dim, "arm": arm, "seeds": len(members)}
        for metric in metrics:
            values = np.array([m[metric] for m in members])
            row[f"{metric}_mean"] = float(values.mean())
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table.append(row)
    return table


def markdown(results: dict, command: str) -> str:
    lines = ["# S2SD ablation on the bundled digits", "", f"Command: `{command}`", "",
             f"Setting: {json.dumps(results['config'])}", "",
             "| dim | arm | seeds | Recall@1 (mean ± std) | NMI (mean ± std) |", "|---|---|---|---|---|"]
    for row in results["table"]:
        lines.append(f"| {row['dim']} | {row['arm']} | {row['seeds']} | {100 * row['recall@1_mean']:.2f} ± {100 * row['recall@1_std']:.2f} "
                     f"| {100 * row['nmi_mean']:.2f} ± {100 * row['nmi_std']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    dims = sorted({row["dim"] for row in results["table"]})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("recall@1", "nmi")):
        for offset, dim in enumerate(dims):
            rows = [r for r in results["table"] if r["dim"] == dim]
            x = np.arange(len(rows)) + 0.15 * (offset - (len(dims) - 1) / 2)
            axis.errorbar(x, [r[f"{metric}_mean"] for r in rows], yerr=[r[f"{metric}_std"] for r in rows],
                          fmt="o", capsize=3, label=f"{dim}-d")
            axis.set_xticks(np.arange(len(rows)), [r["arm"] for r in rows])
        axis.set(title=f"{metric} on unseen digits 5-9 (mean ± std over seeds)", ylabel=metric)
        axis.legend()
    save_figure(figure, path)


def write_ablation(results: dict, out: Path, command: str = "python bench/ablation.py") -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown(results, results.get("command", command)))
    plot(results, out / "ablation.png")
