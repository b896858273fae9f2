"""The training loop of ``s2sd train``: one process, or several under torchrun (DDP).

Every epoch draws its batches and augmentations from a generator seeded by (seed, epoch), so a
run resumed after its last complete epoch ends with the same weights as an uninterrupted one.
Only rank 0 writes, and every file it writes is atomic.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import BEST, LAST, load_checkpoint, read_json, save_checkpoint, write_json_atomic, write_text_atomic
from .config import TrainConfig
from .data import ClassBatchSampler, LabelledImages, fingerprint, load_splits, splits_for, train_transform
from .errors import MissingDependencyError, S2SDError, TrainingDiverged
from .evaluation import evaluate_model
from .losses import S2SDLoss, build_loss
from .model import EmbeddingModel, build_model
from .plots import pyplot, save_figure
from .rundir import RUN_FORMAT, read_run

log = logging.getLogger(__name__)

# How the shipped checkpoint is chosen: never on the test classes (the paper reports the best test epoch,
# which summary.json keeps as "best_test_epoch_paper_protocol", but a shipped model must not be chosen so).
SELECT_BY_VALIDATION = "best validation Recall@1 (--validation-classes)"
SELECT_LAST = "last epoch (no validation classes, so nothing else can be chosen without the test classes)"


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(cuda: bool) -> Distributed:
    """Join the torchrun process group if there is one (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)  # nccl needs each process bound to its own GPU first
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(dist.get_rank(), world_size, local_rank)


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` takes this process's GPU when CUDA works, else the CPU."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise MissingDependencyError(
            f"--device {requested}: torch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu"
        )
    if requested != "cpu" and not requested.startswith("cuda"):
        raise S2SDError(f"invalid --device {requested!r}; choose one of: auto, cpu, cuda, cuda:N")
    return torch.device(requested)


def seed_epoch(seed: int, epoch: int) -> None:
    """Augmentation randomness of an epoch depends on (seed, epoch) only."""
    torch.manual_seed(seed * 100_003 + epoch)


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


def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.run_name or f"{cfg.dataset}-{cfg.variant if cfg.s2sd else 'baseline'}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.out_dir) / name
    if (path / "config.json").exists():
        raise S2SDError(f"{path} already holds a run; pass --resume {path} to continue it, or another --run-name")
    return path


class Trainer:
    """Holds the state of one training run; :meth:`fit` runs it to the last epoch."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False):
        self.cfg, self.run_dir = cfg, run_dir
        self.started = time.time()
        self.device = select_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device.type == "cuda")
        self.train_set, self.test_set = splits_for(cfg)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.loss = build_loss(cfg, self.train_set.num_classes).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.loss)
        self.sampler = ClassBatchSampler(
            self.train_set.labels, cfg.classes_per_batch, cfg.samples_per_class,
            cfg.seed, self.dist.rank, self.dist.world_size, replacement=cfg.sampler == "replacement",
        )
        if cfg.amp and self.device.type != "cuda":
            raise MissingDependencyError(f"--amp needs a CUDA GPU (mixed precision runs on the GPU only); "
                                         f"this run is on {self.device}: drop --amp")
        self.amp = cfg.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = {"epoch": 0, "global_step": 0, "best_recall": -1.0, "best_epoch": None}
        self.history: list[dict] = []
        self._report_data()
        if resume:
            self._load_last()
        elif self.dist.is_main:
            self._write_config()

    # --- setup ---------------------------------------------------------------------------------
    def _report_data(self) -> None:
        if self.sampler.small_classes and self.dist.is_main:
            log.warning(
                "%d training classes have fewer than %d images; they are sampled with replacement",
                self.sampler.small_classes, self.cfg.samples_per_class,
            )

    def _write_config(self) -> None:
        skipped = {"train": self.train_set.skipped, "test": self.test_set.skipped}
        write_json_atomic(self.run_dir / "config.json", {
            "format": RUN_FORMAT,
            "run_id": self.run_dir.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "package_version": __version__,
            "torch_version": torch.__version__,
            "config": self.cfg.to_dict(),
            "config_hash": self.cfg.hash(),
            "dataset_fingerprint": fingerprint(self.train_set, self.test_set),
            "num_train_images": len(self.train_set), "num_test_images": len(self.test_set),
            "num_train_classes": self.train_set.num_classes, "num_test_classes": self.test_set.num_classes,
            "skipped_images": skipped,
            "feature_dim": self.model.feature_dim,
        })

    def _load_last(self) -> None:
        checkpoint = load_checkpoint(self.run_dir / LAST)
        self.model.load_state_dict(checkpoint["model"])
        self.loss.load_state_dict(checkpoint["criterion"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state.update(checkpoint["training_state"]["state"])
        if "scaler" in checkpoint["training_state"]:
            self.scaler.load_state_dict(checkpoint["training_state"]["scaler"])
        self.history = [row for row in _read_jsonl(self.run_dir / "metrics.jsonl") if row["epoch"] <= self.state["epoch"]]
        if self.dist.is_main:
            log.info("resuming %s after epoch %d", self.run_dir, self.state["epoch"])

    # --- loop ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        loader = torch.utils.data.DataLoader(
            LabelledImages(self.train_set, train_transform(self.cfg)), batch_sampler=self.sampler,
            num_workers=self.cfg.num_workers, persistent_workers=False,
        )
        step_module = self._step_module()
        for epoch in range(self.state["epoch"], self.cfg.epochs):
            row = self._train_epoch(epoch, loader, step_module)
            if self._should_evaluate(epoch):
                row.update(self._evaluate())
            self._end_epoch(epoch, row)
        return self._finish()

    def _step_module(self):
        module = _TrainStep(self.model, self.loss)
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def _train_epoch(self, epoch: int, loader, step_module) -> dict:
        seed_epoch(self.cfg.seed, epoch)
        self.sampler.set_epoch(epoch)
        lr = set_epoch_lr(self.optimizer, self.cfg, epoch)
        self.model.train()
        totals: dict[str, float] = {}
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=not self.dist.is_main, leave=False)
        for batch_index, (images, labels) in enumerate(bar):
            parts = self._train_step(step_module, images, labels, epoch, batch_index)
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value
            bar.set_postfix(loss=f"{totals['loss'] / (batch_index + 1):.4f}")
        batches = len(loader)
        return {"epoch": epoch + 1, "step": self.state["global_step"], "lr": lr,
                **{key: value / batches for key, value in totals.items()}}

    def _train_step(self, step_module, images, labels, epoch: int, batch_index: int) -> dict[str, float]:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with autocast:
            result = step_module(images, labels, self.state["global_step"])
        self._check_finite(result.total, epoch, batch_index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state["global_step"] += 1
        return {"loss": result.total.item(), **result.parts}

    def _check_finite(self, loss: torch.Tensor, epoch: int, batch_index: int) -> None:
        bad = (~torch.isfinite(loss.detach())).float()
        if self.dist.world_size > 1:  # every rank must stop together, or the others hang
            dist.all_reduce(bad)
        if bad.item():
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {self.state['global_step']} (epoch {epoch + 1}, "
                f"batch {batch_index + 1}); training stopped. The last good checkpoint "
                f"{self.run_dir / LAST} is intact; lower --lr or check the data"
            )

    def _should_evaluate(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def _evaluate(self) -> dict[str, float]:
        metrics = {}
        if self.dist.is_main:
            metrics = evaluate_model(self.model, self.test_set, self.cfg, self.device)
        if self.dist.world_size > 1:
            dist.barrier()
        return metrics

    def _end_epoch(self, epoch: int, row: dict) -> None:
        row["elapsed_s"] = round(time.time() - self.started, 2)
        self.state["epoch"] = epoch + 1
        self.history.append(row)
        improved = row.get("recall@1", -1.0) > self.state["best_recall"]
        if improved:
            self.state.update(best_recall=row["recall@1"], best_epoch=epoch + 1)
        if self.dist.is_main:
            self._write_epoch(improved)
            if "recall@1" in row:
                log.info("epoch %d: loss %.4f, Recall@1 %.4f, NMI %.4f", epoch + 1, row["loss"], row["recall@1"], row["nmi"])

    def _write_epoch(self, improved: bool) -> None:
        write_text_atomic(self.run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.history))
        checkpoint = dict(
            model_state=self.model.state_dict(), criterion_state=self.loss.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            training_state={"state": self.state, "scaler": self.scaler.state_dict()},
        )
        save_checkpoint(self.run_dir / LAST, **checkpoint)
        if improved:
            save_checkpoint(self.run_dir / BEST, **checkpoint)

    def _finish(self) -> dict:
        evaluated = [row for row in self.history if "recall@1" in row]
        best = next((row for row in evaluated if row["epoch"] == self.state["best_epoch"]), {})
        best_record = {"epoch": self.state["best_epoch"], "metrics": _metrics_only(best)}
        validated = bool(self.cfg.validation_classes)
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": self.state["epoch"],
            "steps": self.state["global_step"],
            "evaluated_on": "validation" if validated else "test",
            "final": _metrics_only(evaluated[-1]) if evaluated else {},
            ("best_validation_epoch" if validated else "best_test_epoch_paper_protocol"): best_record,
            "shipped": self._shipped(validated),
            "wall_time_s": round(time.time() - self.started, 2),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": str(self.device),
            "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            if validated:
                summary["shipped"]["test_metrics"] = self._evaluate_shipped_on_test()
            write_json_atomic(self.run_dir / "summary.json", summary)
            plot_curves(self.history, self.run_dir / "curves.png")
        return summary

    def _shipped(self, validated: bool) -> dict:
        """The checkpoint ``s2sd export`` ships, chosen without the test classes."""
        if validated:
            return {"checkpoint": BEST, "epoch": self.state["best_epoch"], "rule": SELECT_BY_VALIDATION}
        return {"checkpoint": LAST, "epoch": self.state["epoch"], "rule": SELECT_LAST}

    def _evaluate_shipped_on_test(self) -> dict:
        """The shipped (best validation) checkpoint on the test classes: evaluated once, never used to choose."""
        _, test = load_splits(self.cfg.dataset, self.cfg.data_root, self.cfg.skip_bad_images)
        self.model.load_state_dict(load_checkpoint(self.run_dir / BEST)["model"])
        return evaluate_model(self.model, test, self.cfg, self.device)


class _TrainStep(torch.nn.Module):
    """Model and loss in one module, so DDP also averages the criterion's parameters' gradients."""

    def __init__(self, model: EmbeddingModel, loss: S2SDLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor, step: int):
        return self.loss(self.model(images), labels, step)


def _metrics_only(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith(("recall@", "nmi", "map@"))}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and test metrics per epoch, as one PNG."""
    figure, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
    left.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    evaluated = [r for r in history if "recall@1" in r]
    for key in ("recall@1", "nmi", "map@r"):
        right.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=key)
    right.set(xlabel="epoch", title="test metrics (unseen classes)")
    right.legend()
    save_figure(figure, path)


def train(cfg: TrainConfig) -> dict:
    """Train a new run from a resolved config; returns the summary (also in summary.json)."""
    run_dir = new_run_dir(cfg)
    try:
        return Trainer(cfg, run_dir).fit()
    finally:
        _shutdown_distributed()


def resume(run_dir: str | Path, epochs: int | None = None) -> dict:
    """Continue a run after its last complete epoch (optionally to a new epoch count)."""
    run = read_run(run_dir)
    if not (run.path / LAST).is_file():
        raise S2SDError(f"{run.path} has no {LAST}: no epoch completed, start the run again")
    cfg = run.config
    if epochs is not None and epochs != cfg.epochs:
        cfg = replace(cfg, epochs=epochs)
        if int(os.environ.get("RANK", "0")) == 0:  # the folder must keep describing the run
            write_json_atomic(run.path / "config.json", {**read_json(run.path / "config.json"),
                                                          "config": cfg.to_dict(), "config_hash": cfg.hash()})
    try:
        return Trainer(cfg, run.path, resume=True).fit()
    finally:
        _shutdown_distributed()


def _shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
