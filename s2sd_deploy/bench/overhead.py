"""What S2SD adds to training: the objective against its floor, and a full training step.

The floor of the S2SD objective is the teacher MLPs' own forward and backward: no implementation can
do less. Everything else it adds (one criterion per head, the relational and feature distillation)
should cost little on top: the goal is at most 1.2x the floor. Timings are medians over repeats after
a warm-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..tables import markdown_table
from ..timing import measure_interleaved
from ..training.config import build_train_config
from ..training.losses import build_loss
from ..training.model import ModelOutput, TeacherHead, build_embedding_model
from ..training.optim import build_optimizer


@dataclass
class OverheadConfig:
    """Sizes of the benchmark; defaults are the issue's (SPEC.md's training setup)."""

    batch: int = 112
    embed_dim: int = 128
    feature_dim: int = 2048
    target_dims: list[int] = field(default_factory=lambda: [512, 1024, 1536, 2048])
    criterion: str = "multisimilarity"
    backbone: str = "resnet50"
    image_size: int = 224
    loss_repeats: int = 30  # rounds of floor and objective
    step_repeats: int = 3


def _labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) // 2  # 2 samples per class, as in the paper


def objective_overhead(cfg: OverheadConfig, criterion: str | None = None, rounds: int | None = None) -> dict:
    """The whole S2SD objective (student and teacher heads, one criterion per head, relational and feature
    distillation; forward + backward) against its floor, the teacher MLPs' own forward + backward, on fixed
    features f (B, F). The two are timed in turn, round after round, so their ratio shares machine state."""
    criterion = criterion or cfg.criterion
    train_cfg = build_train_config(
        {
            "criterion": criterion,
            "variant": "msdf",
            "embed_dim": cfg.embed_dim,
            "target_dims": cfg.target_dims,
            "feature_delay": 0,
        }
    )
    torch.manual_seed(0)
    labels = _labels(cfg.batch)
    features = torch.randn(cfg.batch, cfg.feature_dim).relu().requires_grad_()  # the backbone's output
    student = torch.nn.Linear(cfg.feature_dim, cfg.embed_dim)
    teachers = torch.nn.ModuleList(TeacherHead(cfg.feature_dim, d) for d in cfg.target_dims)
    loss = build_loss(train_cfg, cfg.batch // 2)

    def floor():
        sum(t(features).sum() for t in teachers).backward()

    def objective():
        output = ModelOutput(
            F.normalize(student(features), dim=-1), [F.normalize(t(features), dim=-1) for t in teachers], features
        )
        loss(output, labels, step=0).total.backward()

    seconds = measure_interleaved(
        {"floor": floor, "objective": objective}, min_rounds=rounds or cfg.loss_repeats, budget_s=0.0
    )
    floor_ms, objective_ms = (float(np.median(seconds[name]) * 1e3) for name in ("floor", "objective"))
    return {
        "criterion": criterion,
        "floor_ms": floor_ms,
        "objective_ms": objective_ms,
        "ratio": objective_ms / floor_ms,
        "rounds": len(seconds["floor"]),
    }


def step_overhead(cfg: OverheadConfig) -> dict:
    """A full training step (forward, loss, backward, Adam) with the backbone, with and without S2SD (MSDFA),
    timed in turn, so drift in the machine's speed (page faults, other load) hits both alike."""
    images = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size)
    labels = _labels(cfg.batch)
    steps = {name: _training_step(cfg, s2sd, images, labels) for name, s2sd in (("plain", False), ("s2sd", True))}
    times = measure_interleaved(steps, min_rounds=cfg.step_repeats, budget_s=0.0)
    plain, s2sd = float(np.median(times["plain"])), float(np.median(times["s2sd"]))
    return {
        "plain_s": plain,
        "s2sd_s": s2sd,
        "overhead": s2sd / plain - 1,
        "all_s": {k: v.tolist() for k, v in times.items()},
    }


def _training_step(cfg: OverheadConfig, s2sd: bool, images: torch.Tensor, labels: torch.Tensor):
    """One step of the paper's setup (Adam, lr 1e-5, weight decay 4e-4, frozen BatchNorm) at these sizes."""
    train_cfg = build_train_config(
        {
            "s2sd": s2sd,
            "criterion": cfg.criterion,
            "embed_dim": cfg.embed_dim,
            "target_dims": cfg.target_dims,
            "feature_delay": 0,
            "lr": 1e-5,
            "weight_decay": 4e-4,
        }
    )
    torch.manual_seed(0)
    model = build_embedding_model(
        cfg.backbone,
        cfg.embed_dim,
        cfg.target_dims if s2sd else [],
        pool_aggregation=s2sd,
        freeze_bn=cfg.backbone == "resnet50",
    ).train()
    loss = build_loss(train_cfg, cfg.batch // 2)
    optimizer = build_optimizer(train_cfg, model, loss)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model(images), labels, step=1).total.backward()
        optimizer.step()

    return step


def run_overhead(cfg: OverheadConfig, with_step: bool = True) -> dict:
    from .machine import machine_info

    result = {
        "config": asdict(cfg),
        "machine": machine_info(),
        "objective": [objective_overhead(cfg, criterion) for criterion in ("multisimilarity", "margin", "triplet")],
    }
    if with_step:
        result["step"] = step_overhead(cfg)
    return result


def markdown(result: dict) -> str:
    """results.md of the overhead benchmark: the objective against its floor per criterion, and the full step."""
    cfg, machine = result["config"], result["machine"]
    rows = [
        [r["criterion"], f"{r['floor_ms']:.1f}", f"{r['objective_ms']:.1f}", f"{r['ratio']:.2f}x"]
        for r in result["objective"]
    ]
    lines = [
        "# S2SD training overhead",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch threads {machine['torch_threads']}",
        "",
        "The S2SD objective (student and teacher heads, one criterion per head, relational and feature distillation; "
        "forward + backward) against its floor, the teacher MLPs' own forward + backward, on fixed features: "
        f"B={cfg['batch']}, d={cfg['embed_dim']}, F={cfg['feature_dim']}, teachers {cfg['target_dims']}; the two "
        "timed in turn, medians. Goal: at most 1.2x.",
        "",
        markdown_table(["criterion", "floor ms", "objective ms", "ratio"], rows),
    ]
    if "step" in result:
        step = result["step"]
        lines += [
            "",
            f"Full training step, {cfg['backbone']} at {cfg['image_size']} px, batch {cfg['batch']}, Adam: "
            f"plain {step['plain_s']:.2f} s, S2SD {step['s2sd_s']:.2f} s: S2SD adds "
            f"{100 * step['overhead']:.1f}%.",
        ]
    return "\n".join(lines) + "\n"
