"""The optimiser of ``s2sd train``: the reference's parameter groups and the step schedule."""

from __future__ import annotations

import torch

from .config import TrainConfig
from .losses import S2SDLoss
from .model import EmbeddingModel


def parameter_groups(cfg: TrainConfig, model: EmbeddingModel, loss: S2SDLoss) -> list[dict]:
    """The reference's groups: backbone and student head at lr with weight decay; teacher MLPs at lr with
    ``teacher_weight_decay`` (0); learnable criterion parameters at ``criterion_lr`` without weight decay."""
    teachers = list(model.teachers.parameters())
    teacher_ids = {id(p) for p in teachers}
    network = [p for p in model.parameters() if id(p) not in teacher_ids]
    groups = [
        {"name": "network", "params": network, "base_lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"name": "teachers", "params": teachers, "base_lr": cfg.lr, "weight_decay": cfg.teacher_weight_decay},
        {"name": "criterion", "params": list(loss.parameters()), "base_lr": cfg.criterion_lr, "weight_decay": 0.0},
    ]
    return [{**group, "lr": group["base_lr"]} for group in groups if group["params"]]


def build_optimizer(cfg: TrainConfig, model: EmbeddingModel, loss: S2SDLoss) -> torch.optim.Optimizer:
    """Adam (weight decay added to the gradient, as in the reference), AdamW or SGD over :func:`parameter_groups`."""
    groups = parameter_groups(cfg, model, loss)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=cfg.lr)


def set_epoch_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epoch: int) -> float:
    """Step schedule: multiply by ``lr_gamma`` at every epoch listed in ``lr_steps``."""
    factor = cfg.lr_gamma ** sum(epoch >= step for step in cfg.lr_steps)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
