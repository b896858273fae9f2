"""What S2SD adds to training: the objective against its floor, and a full training step.

The floor of the S2SD objective is the teacher MLPs' own forward and backward: no implementation can
do less. Everything else it adds (one criterion per head, the relational and feature distillation)
should cost little on top: the goal is at most 1.2x the floor. Timings are medians over repeats after
a warm-up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import build_train_config
from .losses import build_loss
from .model import ModelOutput, TeacherHead, build_model
from .train import build_optimizer


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


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) // 2  # 2 samples per class, as in the paper


def objective_overhead(cfg: OverheadConfig, criterion: str | None = None, rounds: int | None = None) -> dict:
    """The whole S2SD objective (student and teacher heads, one criterion per head, relational and feature
    distillation; forward + backward) against its floor, the teacher MLPs' own forward + backward, on fixed
    features f (B, F). The two are timed in turn, round after round, so their ratio shares machine state."""
    from .latency import measure_interleaved

    criterion = criterion or cfg.criterion
    train_cfg = build_train_config({"dataset": "cub200", "data_root": ".", "criterion": criterion, "variant": "msdf",
                                    "embed_dim": cfg.embed_dim, "target_dims": cfg.target_dims, "feature_delay": 0})
    torch.manual_seed(0)
    labels = _labels(cfg.batch)
    features = torch.randn(cfg.batch, cfg.feature_dim).relu().requires_grad_()  # the backbone's output
    student = torch.nn.Linear(cfg.feature_dim, cfg.embed_dim)
    teachers = torch.nn.ModuleList(TeacherHead(cfg.feature_dim, d) for d in cfg.target_dims)
    loss = build_loss(train_cfg, cfg.batch // 2)

    def floor():
        sum(t(features).sum() for t in teachers).backward()

    def objective():
        output = ModelOutput(F.normalize(student(features), dim=-1), [F.normalize(t(features), dim=-1) for t in teachers],
                             features)
        loss(output, labels, step=0).total.backward()

    seconds = measure_interleaved({"floor": floor, "objective": objective}, min_rounds=rounds or cfg.loss_repeats,
                                  budget_s=0.0)
    floor_ms, objective_ms = (float(np.median(seconds[name]) * 1e3) for name in ("floor", "objective"))
    return {"criterion": criterion, "floor_ms": floor_ms, "objective_ms": objective_ms, "ratio": objective_ms / floor_ms,
            "rounds": len(seconds["floor"])}


def step_overhead(cfg: OverheadConfig) -> dict:
    """A full training step (forward, loss, backward, Adam) with the backbone, with and without S2SD (MSDFA).

    The two steps alternate, so drift in the machine's speed (page faults, other load) hits both alike.
    """
    images = torch.randn(cfg.batch, 3, cfg.image_size, cfg.image_size)
    labels = _labels(cfg.batch)
    steps = {name: _training_step(cfg, s2sd, images, labels) for name, s2sd in (("plain", False), ("s2sd", True))}
    for step in steps.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(cfg.step_repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    plain, s2sd = float(np.median(times["plain"])), float(np.median(times["s2sd"]))
    return {"plain_s": plain, "s2sd_s": s2sd, "overhead": s2sd / plain - 1, "all_s": times}


def _training_step(cfg: OverheadConfig, s2sd: bool, images: torch.Tensor, labels: torch.Tensor):
    train_cfg = build_train_config({"dataset": "cub200", "data_root": ".", "backbone": cfg.backbone, "s2sd": s2sd,
                                    "criterion": cfg.criterion, "embed_dim": cfg.embed_dim, "target_dims": cfg.target_dims,
                                    "image_size": cfg.image_size, "resize_size": cfg.image_size, "feature_delay": 0})
    torch.manual_seed(0)
    model = build_model(train_cfg).train()
    loss = build_loss(train_cfg, cfg.batch // 2)
    optimizer = build_optimizer(train_cfg, model, loss)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model(images), labels, step=1).total.backward()
        optimizer.step()

    return step


def run_overhead(cfg: OverheadConfig, with_step: bool = True) -> dict:
    from .env import machine_info

    result = {"config": asdict(cfg), "machine": machine_info(),
              "objective": [objective_overhead(cfg, criterion) for criterion in ("multisimilarity", "margin", "triplet")]}
    if with_step:
        result["step"] = step_overhead(cfg)
    return result
