"""The S2SD ablation on the bundled digits: baseline, DSD, MSD, MSDF, MSDFA over seeds and dims.

Every arm gets the same budget (epochs, batches, augmentation) and its own learning rate, chosen
from the same grid on held-out training classes: train on digits 0-2, validate on 3-4, keep the lr
with the best validation mAP@R averaged over the selection seeds (Recall@1 on two held-out classes
saturates). The test digits 5-9 are only seen by the final runs. Runs already finished in the runs
folder are reused, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_files import write_json_atomic, write_text_atomic
from ..plots import pyplot, save_figure
from ..tables import markdown_table
from ..training.datasets import splits_for
from ..training.evaluation import evaluate_heads
from ..training.run_dir import BEST, LAST, RunDir

RUN_NAME = re.compile(r"d(?P<dim>\d+)-(?P<arm>\w+)-lr(?P<lr>[^-]+)-seed(?P<seed>\d+)")
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
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 1e-3])  # each arm picks its own from these
    selection_seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2]
    )  # with two, a third seed flipped two arms' choice
    validation_classes: int = 2  # digits 3-4 validate the lr; 0-2 train
    selection_batch_size: int = 48  # 3 classes x 16: every class the held-out split leaves
    selection_metric: str = "map@r"
    feature_delay: int = 30  # steps; the preset's 60 would start feature distillation late in 6 epochs
    out: str = "bench/results/ablation"
    runs_dir: str = "runs/ablation"


def run_ablation(cfg: AblationConfig, progress=print) -> dict:
    """Choose each arm's lr, train every (dim, arm, seed) at it, then aggregate and write the results."""
    selection = choose_learning_rates(cfg, progress)
    chosen = {(row["dim"], row["arm"]): row["lr"] for row in selection if row["chosen"]}
    records = []
    for dim in cfg.dims:
        for arm in cfg.arms:
            for seed in cfg.seeds:
                lr = chosen[(dim, arm)]
                final = train_arm(cfg, dim, arm, seed, lr, validate=False)
                records.append({"dim": dim, "arm": arm, "seed": seed, "lr": lr, **final})
                progress(
                    f"d{dim}-{arm}-seed{seed} (lr {lr:g}): Recall@1 {final['recall@1']:.4f} NMI {final['nmi']:.4f}"
                )
    table = aggregate(records)
    for row in table:
        row["lr"] = chosen[(row["dim"], row["arm"])]
    results = {"config": asdict(cfg), "selection": selection, "runs": records, "table": table}
    write_ablation(results, Path(cfg.out))
    return results


def choose_learning_rates(cfg: AblationConfig, progress=print) -> list[dict]:
    """Mean validation metric of every (dim, arm, lr); the best lr of each (dim, arm) is ``chosen``."""
    rows = []
    for dim in cfg.dims:
        for arm in cfg.arms:
            candidates = []
            for lr in cfg.lrs:
                finals = [train_arm(cfg, dim, arm, seed, lr, validate=True) for seed in cfg.selection_seeds]
                candidates.append(
                    {
                        "dim": dim,
                        "arm": arm,
                        "lr": lr,
                        "seeds": len(finals),
                        "chosen": False,
                        **{f"val_{m}_mean": float(np.mean([f[m] for f in finals])) for m in ("map@r", "recall@1")},
                    }
                )
            best = max(candidates, key=lambda row: row[f"val_{cfg.selection_metric}_mean"])
            best["chosen"] = True
            progress(
                f"d{dim}-{arm}: lr {best['lr']:g} (validation {cfg.selection_metric} "
                f"{best[f'val_{cfg.selection_metric}_mean']:.4f})"
            )
            rows += candidates
    return rows


def train_arm(cfg: AblationConfig, dim: int, arm: str, seed: int, lr: float, validate: bool) -> dict:
    """The final metrics of one run: read from its folder if it finished, resumed if it was interrupted
    after an epoch, otherwise trained from the start."""
    from ..training.config import build_train_config
    from ..training.trainer import resume, train

    runs_dir = Path(cfg.runs_dir) / ("select" if validate else "test")
    name = f"d{dim}-{arm}-lr{lr:g}-seed{seed}"
    run_dir = runs_dir / name
    if (run_dir / LAST).is_file() and not RunDir(run_dir).finished:
        resume(run_dir)
    elif not RunDir(run_dir).finished:
        shutil.rmtree(run_dir, ignore_errors=True)  # started, but no epoch finished: nothing to keep
        overrides = {
            **ARMS[arm],
            "embed_dim": dim,
            "seed": seed,
            "epochs": cfg.epochs,
            "lr": lr,
            "feature_delay": cfg.feature_delay,
            "eval_every": cfg.epochs,
            "out_dir": str(runs_dir),
            "run_name": name,
        }
        if validate:
            overrides |= {"validation_classes": cfg.validation_classes, "batch_size": cfg.selection_batch_size}
        train(build_train_config(overrides))
    drop_checkpoints(run_dir, keep_best=not validate)
    return RunDir(run_dir).summary()["final"]


def drop_checkpoints(run_dir: Path, keep_best: bool) -> None:
    """Delete what a finished run no longer needs: its resume point, and for selection runs its weights.
    Each checkpoint holds the model, teachers and Adam state (260 MB at resnet18), so keeping both for
    all 140 runs filled 64 GB; test runs keep ``best`` for bench/ablation_heads.py."""
    for name in (LAST,) if keep_best else (LAST, BEST):
        (run_dir / name).unlink(missing_ok=True)


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
    lines = [
        "# S2SD ablation on the bundled digits",
        "",
        f"Command: `{command}`",
        "",
        f"Setting: {json.dumps(results['config'])}",
        "",
        "## Test: unseen digits 5-9, each arm at its chosen lr",
        "",
    ]
    rows = [
        [
            row["dim"],
            row["arm"],
            row.get("lr", ""),
            row["seeds"],
            f"{100 * row['recall@1_mean']:.2f} ± {100 * row['recall@1_std']:.2f}",
            f"{100 * row['nmi_mean']:.2f} ± {100 * row['nmi_std']:.2f}",
        ]
        for row in results["table"]
    ]
    lines.append(markdown_table(["dim", "arm", "lr", "seeds", "Recall@1 (mean ± std)", "NMI (mean ± std)"], rows))
    if results.get("selection"):
        lrs = sorted({row["lr"] for row in results["selection"]})
        metric = results["config"].get("selection_metric", "map@r")
        lines += [
            "",
            f"## Learning-rate choice: validation {metric} on held-out training digits 3-4 "
            "(trained on 0-2; mean over selection seeds, chosen in bold)",
            "",
        ]
        cells: dict[tuple, dict] = {}
        for row in results["selection"]:
            value = f"{100 * row[f'val_{metric}_mean']:.2f}"
            cells.setdefault((row["dim"], row["arm"]), {})[row["lr"]] = f"**{value}**" if row["chosen"] else value
        rows = [[dim, arm, *[by_lr.get(lr, "") for lr in lrs]] for (dim, arm), by_lr in cells.items()]
        lines.append(markdown_table(["dim", "arm", *[f"lr {lr:g}" for lr in lrs]], rows))
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()
    dims = sorted({row["dim"] for row in results["table"]})
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("recall@1", "nmi")):
        for offset, dim in enumerate(dims):
            rows = [r for r in results["table"] if r["dim"] == dim]
            x = np.arange(len(rows)) + 0.15 * (offset - (len(dims) - 1) / 2)
            axis.errorbar(
                x,
                [r[f"{metric}_mean"] for r in rows],
                yerr=[r[f"{metric}_std"] for r in rows],
                fmt="o",
                capsize=3,
                label=f"{dim}-d",
            )
            axis.set_xticks(np.arange(len(rows)), [r["arm"] for r in rows])
        axis.set(title=f"{metric} on unseen digits 5-9 (mean ± std over seeds)", ylabel=metric)
        axis.legend()
    save_figure(figure, path)


def write_ablation(results: dict, out: Path, command: str = "python bench/ablation.py") -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown(results, results.get("command", command)))
    plot(results, out / "ablation.png")


def heads_recall(runs_dir: Path) -> dict[str, dict[str, float]]:
    """Run name -> head name -> test Recall@1, for every finished run under ``runs_dir``."""
    results = {}
    for run_dir in sorted(
        p for p in runs_dir.iterdir() if RUN_NAME.fullmatch(p.name) and (p / "best.safetensors").exists()
    ):
        run = RunDir.open(run_dir)
        model, _ = run.load_model("best")
        _, test = splits_for(run.config)
        results[run_dir.name] = {head: m["recall@1"] for head, m in evaluate_heads(model, test, run.config).items()}
        print(run_dir.name, results[run_dir.name], flush=True)
    return results


def heads_markdown(results: dict[str, dict[str, float]], command: str) -> str:
    grouped = defaultdict(lambda: defaultdict(list))  # (dim, arm, lr) -> head -> recalls over seeds
    for name, heads in results.items():
        match = RUN_NAME.fullmatch(name)
        for head, recall in heads.items():
            grouped[(int(match["dim"]), match["arm"], match["lr"])][head].append(recall)
    lines = [
        "# Student and teacher heads in the ablation's test runs",
        "",
        f"Command: `{command}`",
        "",
        "Recall@1 % on unseen digits 5-9, mean ± sample std over seeds (as in results.md).",
        "",
    ]
    rows = [
        [dim, arm, lr, head, f"{100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}"]
        for (dim, arm, lr), heads in sorted(grouped.items())
        for head, values in heads.items()
    ]
    lines.append(markdown_table(["dim", "arm", "lr", "head", "Recall@1"], rows))
    return "\n".join(lines) + "\n"
