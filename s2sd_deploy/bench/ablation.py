"""The S2SD ablation: baseline against S2SD variants, over seeds and student dimensions, every head evaluated.

Every arm gets the same budget (the dataset preset's epochs, batches and augmentation) and its own learning
rate, chosen from the same grid on validation classes held out of the training classes
(``--validation-classes``): the test classes are only seen by the final runs, one per seed. Each final run
is evaluated with every head it has (the student and each teacher), so the table says how far each
student is from its own teachers, and how far the baseline is from both. Runs already finished in the runs
folder are reused, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic_files import read_json, write_json_atomic, write_text_atomic
from ..plots import pyplot, save_figure
from ..tables import markdown_table
from ..training.run_dir import BEST, LAST, RunDir

ARMS = {
    "baseline": {"s2sd": False},
    "dsd": {"variant": "dsd"},
    "msd": {"variant": "msd"},
    "msdf": {"variant": "msdf"},
    "msdfa": {"variant": "msdfa"},
    # Probes of why an arm falls short: the same DSD with a tenth of the distillation weight, and with none
    # (the teacher head and its criterion still train the backbone, the student's own loss still halved).
    "dsd-w5": {"variant": "dsd", "distill_weight": 5.0},
    "dsd-w0": {"variant": "dsd", "distill_weight": 0.0},
}

HEADS = "heads.json"  # per test run: Recall@1 / NMI / mAP@R of every head on the test classes


@dataclass
class AblationConfig:
    """Options of bench/ablation.py; saved with the results."""

    dataset: str = "glyphs"
    dims: list[int] = field(default_factory=lambda: [16, 64])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[str] = field(default_factory=lambda: ["baseline", "dsd", "msdfa"])
    lrs: list[float] = field(default_factory=lambda: [3e-4, 1e-3, 3e-3])  # each arm picks its own from these
    selection_seeds: list[int] = field(default_factory=lambda: [0])
    validation_classes: int = 50  # held out of glyphs' 251 training classes to choose the lr
    selection_metric: str = "recall@1"
    epochs: int | None = None  # None: the dataset preset's
    overrides: dict = field(default_factory=dict)  # other TrainConfig values for every run, e.g. {"batch_size": 48}
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
                heads = train_arm(cfg, dim, arm, seed, lr, validate=False)
                records.append({"dim": dim, "arm": arm, "seed": seed, "lr": lr, "heads": heads})
                student = heads[f"student-{dim}"]
                progress(f"d{dim}-{arm}-seed{seed} (lr {lr:g}): student Recall@1 {student['recall@1']:.4f}")
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
                metrics = {f"val_{m}_mean": float(np.mean([f[m] for f in finals])) for m in ("map@r", "recall@1")}
                candidates.append({"dim": dim, "arm": arm, "lr": lr, "seeds": len(finals), "chosen": False, **metrics})
            best = max(candidates, key=lambda row: row[f"val_{cfg.selection_metric}_mean"])
            best["chosen"] = True
            progress(
                f"d{dim}-{arm}: lr {best['lr']:g} (validation {cfg.selection_metric} "
                f"{best[f'val_{cfg.selection_metric}_mean']:.4f})"
            )
            rows += candidates
    return rows


def train_arm(cfg: AblationConfig, dim: int, arm: str, seed: int, lr: float, validate: bool) -> dict:
    """One run, trained (or resumed, or read back when it finished before): the final validation metrics of
    a selection run, or the test metrics of every head of a final run."""
    from ..training.config import build_train_config
    from ..training.trainer import resume, train

    run_dir = Path(cfg.runs_dir) / ("select" if validate else "test") / f"d{dim}-{arm}-lr{lr:g}-seed{seed}"
    if (run_dir / LAST).is_file() and not RunDir(run_dir).finished:
        resume(run_dir)
    elif not RunDir(run_dir).finished:  # new, or started without finishing an epoch: train replaces the latter
        overrides = {
            **cfg.overrides,
            **ARMS[arm],
            "dataset": cfg.dataset,
            "embed_dim": dim,
            "seed": seed,
            "lr": lr,
            "epochs": cfg.epochs,
            "eval_untrained": False,
            "out_dir": str(run_dir.parent),
            "run_name": run_dir.name,
        }
        overrides["eval_every"] = 1000  # only the last epoch: nothing is chosen from the curve
        if validate:
            overrides["validation_classes"] = cfg.validation_classes
        train(build_train_config(overrides))
    if validate:
        drop_checkpoints(run_dir)
        return RunDir(run_dir).summary()["final"]
    return test_heads(run_dir)


def test_heads(run_dir: Path) -> dict[str, dict[str, float]]:
    """Metrics of every head of a finished run on the test classes (kept in heads.json; then the weights go)."""
    if not (run_dir / HEADS).is_file():
        from ..training.datasets import splits_for
        from ..training.evaluation import evaluate_heads

        run = RunDir.open(run_dir)
        model, _ = run.load_model("last")
        _, test = splits_for(run.config)
        write_json_atomic(run_dir / HEADS, evaluate_heads(model, test, run.config))
    drop_checkpoints(run_dir)
    return read_json(run_dir / HEADS)


def drop_checkpoints(run_dir: Path) -> None:
    """Delete the weights of a finished run whose numbers are recorded: each checkpoint holds the model, its
    teachers and Adam's state (hundreds of MB at resnet18), and an ablation has dozens of runs."""
    for name in (LAST, BEST):
        (run_dir / name).unlink(missing_ok=True)


def aggregate(records: list[dict]) -> list[dict]:
    """Per (dim, arm), in input order: mean and sample std over seeds of every head's Recall@1, the student's NMI
    and mAP@R, and the gap from the largest teacher to the student (paired per seed)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["dim"], record["arm"]), []).append(record)
    table = []
    for (dim, arm), members in groups.items():
        student = f"student-{dim}"
        row = {"dim": dim, "arm": arm, "seeds": len(members)}
        for name in members[0]["heads"]:
            row[name] = mean_std([m["heads"][name]["recall@1"] for m in members])
        for metric in ("nmi", "map@r"):
            row[f"student {metric}"] = mean_std([m["heads"][student][metric] for m in members])
        teachers = sorted((n for n in members[0]["heads"] if n.startswith("teacher-")), key=lambda n: int(n[8:]))
        if teachers:
            largest = teachers[-1]
            row["gap"] = mean_std([m["heads"][largest]["recall@1"] - m["heads"][student]["recall@1"] for m in members])
            row["largest_teacher"] = largest
        table.append(row)
    return table


def mean_std(values: list[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def percent(cell: dict | None) -> str:
    return f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}" if cell else ""


def markdown(results: dict, command: str) -> str:
    cfg = results["config"]
    table = results["table"]
    heads = sorted({k for row in table for k in row if k.startswith("teacher-")}, key=lambda n: int(n[8:]))
    lines = [
        f"# S2SD ablation on {cfg['dataset']}",
        "",
        f"Command: `{command}`",
        "",
        f"Setting: {json.dumps(cfg)}",
        "",
        "## Test classes: every head of the final runs, each arm at its chosen lr",
        "",
        "Recall@1 %, mean ± sample std over seeds. gap: largest teacher minus student, per seed.",
        "",
    ]
    rows = [
        [
            row["dim"],
            row["arm"],
            row.get("lr", ""),
            row["seeds"],
            percent(row[f"student-{row['dim']}"]),
            *[percent(row.get(h)) for h in heads],
            percent(row.get("gap")),
            percent(row["student nmi"]),
            percent(row["student map@r"]),
        ]
        for row in table
    ]
    lines.append(
        markdown_table(["dim", "arm", "lr", "seeds", "student", *heads, "gap", "student NMI", "student mAP@R"], rows)
    )
    lines += [
        "",
        "## Learning-rate choice",
        "",
        f"Validation {cfg['selection_metric']} on the last "
        f"{cfg['validation_classes']} training classes, held out (mean over selection seeds; chosen in bold).",
        "",
    ]
    lrs = sorted({row["lr"] for row in results["selection"]})
    cells: dict[tuple, dict] = {}
    key = f"val_{cfg['selection_metric']}_mean"
    for row in results["selection"]:
        value = f"{100 * row[key]:.2f}"

        cells.setdefault((row["dim"], row["arm"]), {})[row["lr"]] = f"**{value}**" if row["chosen"] else value
    lines.append(
        markdown_table(
            ["dim", "arm", *[f"lr {lr:g}" for lr in lrs]],
            [[dim, arm, *[by_lr.get(lr, "") for lr in lrs]] for (dim, arm), by_lr in cells.items()],
        )
    )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Student Recall@1 per arm and dim, with the largest teacher's beside it (mean ± std over seeds)."""
    plt = pyplot()
    dims = sorted({row["dim"] for row in results["table"]})
    figure, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4), squeeze=False)
    for axis, dim in zip(axes[0], dims):
        rows = [r for r in results["table"] if r["dim"] == dim]
        x = np.arange(len(rows))
        student = [r[f"student-{dim}"] for r in rows]
        axis.errorbar(
            x - 0.1,
            [s["mean"] for s in student],
            yerr=[s["std"] for s in student],
            fmt="o",
            capsize=3,
            label=f"student ({dim}-d)",
        )
        teacher = [r.get(r.get("largest_teacher", ""), None) for r in rows]
        shown = [(i, t) for i, t in enumerate(teacher) if t]
        if shown:
            axis.errorbar(
                [i + 0.1 for i, _ in shown],
                [t["mean"] for _, t in shown],
                yerr=[t["std"] for _, t in shown],
                fmt="s",
                capsize=3,
                label="largest teacher",
            )
        axis.set_xticks(x, [r["arm"] for r in rows])
        axis.set(title=f"{dim}-d student: Recall@1 on test classes", ylabel="Recall@1")
        axis.legend()
    save_figure(figure, path)


def write_ablation(results: dict, out: Path, command: str = "python bench/ablation.py") -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown(results, results.get("command", command)))
    plot(results, out / "ablation.png")
