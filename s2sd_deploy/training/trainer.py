"""The training loop of ``s2sd train``: one process, or several under torchrun (DDP).

Every epoch draws its batches and augmentations from a generator seeded by (seed, epoch), so a
run resumed after its last complete epoch ends with the same weights as an uninterrupted one.
Only rank 0 writes, and every file it writes is atomic.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .. import __version__
from ..atomic_files import check_free_space
from ..errors import Interrupted, MissingDependencyError, S2SDError, TrainingDiverged
from ..output_folders import claim_output_folder
from .config import TrainConfig
from .datasets import fingerprint, hold_out_classes, load_splits
from .distributed import init_distributed, select_device, shutdown_distributed
from .evaluation import evaluate_model
from .loading import LabelledImages, train_transform
from .losses import S2SDLoss, build_loss
from .model import EmbeddingModel, build_model
from .optim import build_optimizer, set_epoch_lr
from .run_dir import BEST, LAST, RunDir, load_matching
from .sampler import ClassBatchSampler

log = logging.getLogger(__name__)

# How the shipped checkpoint is chosen: never on the test classes (the paper reports the best test epoch,
# which summary.json keeps as "best_test_epoch_paper_protocol", but a shipped model must not be chosen so).
SELECT_BY_VALIDATION = "best validation Recall@1 (--validation-classes)"
SELECT_LAST = "last epoch (no validation classes, so nothing else can be chosen without the test classes)"


def seed_epoch(seed: int, epoch: int) -> None:
    """Augmentation (and criterion sampling) randomness of an epoch depends on (seed, epoch) only."""
    torch.manual_seed(seed * 100_003 + epoch)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def new_run_dir(cfg: TrainConfig) -> RunDir:
    """Claim the run's folder for this process; a run that never completed an epoch is replaced."""
    name = cfg.run_name or f"{cfg.dataset}-{cfg.variant if cfg.s2sd else 'baseline'}-{datetime.now():%Y%m%d-%H%M%S}"
    run = RunDir(Path(cfg.out_dir) / name)
    if not is_main_process():  # rank 0 claims and writes
        return run
    # A folder of the user's (files, no config.json) is never written into: a failed start would delete files
    # named like a run's (summary.json, curves.png, ...) from it.
    claim_output_folder(
        run.path, "run directory", what="an s2sd run directory", owner_files=[], resumable=[RunDir.CONFIG, RunDir.LOCK]
    )
    run.claim()
    if (run.path / RunDir.CONFIG).exists():
        if run.has_completed_epoch:
            raise S2SDError(
                f"{run.path} already holds a run; pass --resume {run.path} to continue it, or another --run-name"
            )
        log.warning("replacing %s: it stopped before completing an epoch", run.path)
        run.clear()
    return run


class Trainer:
    """Holds the state of one training run; :meth:`fit` runs it to the last epoch."""

    def __init__(self, cfg: TrainConfig, run: RunDir, resume: bool = False):
        self.cfg, self.run = cfg, run
        self.started = time.time()  # moved back by the time earlier sessions of a resumed run took
        self.device = check_machine(cfg)
        self.dist = init_distributed(self.device.type == "cuda")
        train_set, self.final_test_set = load_splits(cfg.dataset, cfg.data_root, cfg.skip_bad_images)
        # test_set is what every epoch evaluates on: the held-out validation classes, if any, else the test split.
        self.train_set, self.test_set = (
            hold_out_classes(train_set, cfg.validation_classes)
            if cfg.validation_classes
            else (train_set, self.final_test_set)
        )
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.loss = build_loss(cfg, self.train_set.num_classes).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model, self.loss)
        self.sampler = ClassBatchSampler(
            self.train_set.labels,
            cfg.classes_per_batch,
            cfg.samples_per_class,
            cfg.seed,
            self.dist.rank,
            self.dist.world_size,
            replacement=cfg.sampler == "replacement",
        )
        self.amp = cfg.amp
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.state = {"epoch": 0, "global_step": 0, "best_recall": -1.0, "best_epoch": None, "elapsed_s": 0.0}
        self.history: list[dict] = []
        self._report_data()
        if self.dist.is_main:
            self._check_space()
        if resume:
            self._load_last()
        elif self.dist.is_main:
            self._write_config()

    # --- setup ---------------------------------------------------------------------------------
    def _report_data(self) -> None:
        if self.sampler.small_classes and self.dist.is_main:
            log.warning(
                "%d training classes have fewer than %d images; they are sampled with replacement",
                self.sampler.small_classes,
                self.cfg.samples_per_class,
            )

    def _check_space(self) -> None:
        """Refuse at once a disk that cannot hold the checkpoints, instead of failing after the first epoch."""
        parameters = sum(p.numel() * p.element_size() for p in (*self.model.parameters(), *self.loss.parameters()))
        state = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        one = state + 2 * parameters  # weights and buffers, and the optimiser's two moments (Adam)
        held = sum((self.run.path / name).stat().st_size for name in (LAST, BEST) if (self.run.path / name).is_file())
        check_free_space(
            self.run.path,
            3 * one - held,
            "run directory",
            f"training (last and best checkpoints, and the next one while it is written: {one / 2**20:.0f} MiB each)",
        )

    def _write_config(self) -> None:
        self.run.write_config(
            self.cfg,
            {
                "run_id": self.run.path.name,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "package_version": __version__,
                "torch_version": torch.__version__,
                "dataset_fingerprint": fingerprint(self.train_set, self.test_set),
                "num_train_images": len(self.train_set),
                "num_test_images": len(self.test_set),
                "num_train_classes": self.train_set.num_classes,
                "num_test_classes": self.test_set.num_classes,
                "skipped_images": {"train": self.train_set.skipped, "test": self.test_set.skipped},
                "feature_dim": self.model.feature_dim,
            },
        )

    def _load_last(self) -> None:
        checkpoint = self.run.load_checkpoint(LAST)
        config_path = self.run.path / RunDir.CONFIG
        load_matching(self.model, checkpoint["model"], self.run.path / LAST, config_path, strict=True)
        load_matching(self.loss, checkpoint["criterion"], self.run.path / LAST, config_path, strict=True)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state.update(checkpoint["training_state"]["state"])
        if "scaler" in checkpoint["training_state"]:
            self.scaler.load_state_dict(checkpoint["training_state"]["scaler"])
        self.started -= self.state.get("elapsed_s", 0.0)
        self.history = [row for row in self.run.metrics() if row["epoch"] <= self.state["epoch"]]
        self._check_best()
        if self.dist.is_main:
            log.info("resuming %s after epoch %d", self.run.path, self.state["epoch"])

    def _check_best(self) -> None:
        """A damaged best.safetensors must not survive a resume that then reports success; a deleted one is
        chosen again from the epochs still to come."""
        if self.state["best_epoch"] is None:
            return
        if not (self.run.path / BEST).is_file():
            if self.cfg.validation_classes and self.state["epoch"] >= self.cfg.epochs:  # BEST is what ships
                raise S2SDError(
                    f"{self.run.path / BEST} is missing and no epochs remain to choose it again; "
                    f"pass --epochs {self.state['epoch'] + 1} or more to train more"
                )
            log.warning("%s is missing: the best epoch is chosen again from the remaining epochs", BEST)
            self.state.update(best_recall=-1.0, best_epoch=None)
            return
        try:
            self.run.load_checkpoint(BEST)
        except S2SDError as error:
            raise S2SDError(
                f"{error}; delete it to continue: the best epoch is then chosen again from the epochs still to come"
            ) from None

    # --- loop ----------------------------------------------------------------------------------
    def fit(self) -> dict:
        loader = torch.utils.data.DataLoader(
            LabelledImages(self.train_set, train_transform(self.cfg)),
            batch_sampler=self.sampler,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
        )
        step_module = self._step_module()
        if self.cfg.eval_untrained and not self.history:
            self._evaluate_untrained()
        for epoch in range(self.state["epoch"], self.cfg.epochs):
            row = self._train_epoch(epoch, loader, step_module)
            if self._should_evaluate(epoch):
                row.update(self._evaluate())
            self._end_epoch(epoch, row)
        return self._finish()

    def _evaluate_untrained(self) -> None:
        """Epoch 0: the network before training, so the curves and the summary show what training adds."""
        row = {"epoch": 0, "step": 0, **self._evaluate()}
        row["elapsed_s"] = round(time.time() - self.started, 2)
        self.history.append(row)
        if self.dist.is_main:
            self.run.write_metrics(self.history)
            log.info("epoch 0 (untrained): Recall@1 %.4f, NMI %.4f", row["recall@1"], row["nmi"])

    def _step_module(self):
        module = _TrainStep(self.model, self.loss)
        if self.dist.joined:
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
        return {
            "epoch": epoch + 1,
            "step": self.state["global_step"],
            "lr": lr,
            **{key: value / batches for key, value in totals.items()},
        }

    def _train_step(self, step_module, images, labels, epoch: int, batch_index: int) -> dict[str, float]:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()
        with autocast:  # the network only: the loss computes in fp32 (S2SDLoss)
            result = step_module(images, labels, self.state["global_step"])
        self._check_finite(result.total, epoch, batch_index)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(result.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state["global_step"] += 1
        parts = {"loss": result.total.detach(), **result.parts}
        return dict(zip(parts, torch.stack(list(parts.values())).tolist()))  # one device sync for all parts

    def _check_finite(self, loss: torch.Tensor, epoch: int, batch_index: int) -> None:
        bad = (~torch.isfinite(loss.detach())).float()
        if self.dist.joined:  # every rank must stop together, or the others hang
            dist.all_reduce(bad)
        if bad.item():
            kept = (
                f"the last good checkpoint {self.run.path / LAST} is intact"
                if self.run.has_completed_epoch
                else "no epoch had completed, so there is no checkpoint"
            )
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {self.state['global_step']} (epoch {epoch + 1}, "
                f"batch {batch_index + 1}); training stopped: {kept}. Lower --lr or check the data"
            )

    def _should_evaluate(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs

    def _evaluate(self) -> dict[str, float]:
        metrics = {}
        if self.dist.is_main:
            metrics = evaluate_model(self.model, self.test_set, self.cfg, self.device)
        if self.dist.joined:
            dist.barrier()
        return metrics

    def _end_epoch(self, epoch: int, row: dict) -> None:
        row["elapsed_s"] = round(time.time() - self.started, 2)
        self.state.update(epoch=epoch + 1, elapsed_s=row["elapsed_s"])
        self.history.append(row)
        improved = row.get("recall@1", -1.0) > self.state["best_recall"]
        if improved:
            self.state.update(best_recall=row["recall@1"], best_epoch=epoch + 1)
        if self.dist.is_main:
            self._write_epoch(improved)
            if "recall@1" in row:
                log.info(
                    "epoch %d: loss %.4f, Recall@1 %.4f, NMI %.4f", epoch + 1, row["loss"], row["recall@1"], row["nmi"]
                )

    def _write_epoch(self, improved: bool) -> None:
        """Checkpoints first, then the metrics: metrics.jsonl never lists an epoch whose weights are not saved."""
        checkpoint = dict(
            model_state=self.model.state_dict(),
            criterion_state=self.loss.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            training_state={"state": self.state, "scaler": self.scaler.state_dict()},
        )
        self.run.save_checkpoint(LAST, **checkpoint)
        if improved:
            self.run.copy_checkpoint(LAST, BEST)
        self.run.write_metrics(self.history)

    def _finish(self) -> dict:
        evaluated = [row for row in self.history if "recall@1" in row]
        best = next((row for row in evaluated if row["epoch"] == self.state["best_epoch"]), {})
        best_record = {"epoch": self.state["best_epoch"], "metrics": _metrics_only(best)}
        validated = bool(self.cfg.validation_classes)
        summary = {
            "run_dir": str(self.run.path),
            "epochs": self.state["epoch"],
            "steps": self.state["global_step"],
            "evaluated_on": "validation" if validated else "test",
            "final": _metrics_only(evaluated[-1]) if evaluated else {},
            "untrained": _metrics_only(self.history[0]) if self.history and self.history[0]["epoch"] == 0 else {},
            ("best_validation_epoch" if validated else "best_test_epoch_paper_protocol"): best_record,
            "shipped": self._shipped(validated),
            "wall_time_s": round(time.time() - self.started, 2),  # every session of a resumed run
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "distributed_backend": self.dist.backend,
        }
        if self.dist.is_main:
            if validated:
                summary["shipped"]["test_metrics"] = self._evaluate_shipped_on_test()
            self.run.write_summary(summary)
            self.run.write_curves(self.history)
        return summary

    def _shipped(self, validated: bool) -> dict:
        """The checkpoint ``s2sd export`` ships, chosen without the test classes."""
        if validated:
            return {"checkpoint": BEST, "epoch": self.state["best_epoch"], "rule": SELECT_BY_VALIDATION}
        return {"checkpoint": LAST, "epoch": self.state["epoch"], "rule": SELECT_LAST}

    def _evaluate_shipped_on_test(self) -> dict:
        """The shipped (best validation) checkpoint on the test classes: evaluated once, never used to choose."""
        self.model.load_state_dict(self.run.load_checkpoint(BEST)["model"])
        return evaluate_model(self.model, self.final_test_set, self.cfg, self.device)


class _TrainStep(torch.nn.Module):
    """Model and loss in one module, so DDP also averages the criterion's parameters' gradients."""

    def __init__(self, model: EmbeddingModel, loss: S2SDLoss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, images: torch.Tensor, labels: torch.Tensor, step: int):
        return self.loss(self.model(images), labels, step)


def _metrics_only(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith(("recall@", "nmi", "map@"))}


def train(cfg: TrainConfig) -> dict:
    """Train a new run from a resolved config; returns the summary (also in summary.json)."""
    check_machine(cfg)
    run = new_run_dir(cfg)
    with stopping(run):
        try:
            trainer = Trainer(cfg, run)
        except BaseException:  # bad data, Ctrl-C, ...: nothing worth keeping was written yet
            if is_main_process() and not run.has_completed_epoch:
                run.discard()
            raise
        return trainer.fit()


def check_machine(cfg: TrainConfig) -> torch.device:
    """Refuse a device this machine lacks before anything is written."""
    device = select_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if cfg.amp and device.type != "cuda":
        raise MissingDependencyError(
            f"--amp needs a CUDA GPU (mixed precision runs on the GPU only); this run is on {device}: drop --amp"
        )
    return device


def resume(run_dir: str | Path, epochs: int | None = None) -> dict:
    """Continue a run after its last complete epoch (optionally to a new epoch count); a run that never
    completed an epoch starts over with its own configuration."""
    run = RunDir.open(run_dir)
    if is_main_process():
        run.claim()
    cfg = run.config
    completed = run.load_checkpoint(LAST)["training_state"]["state"]["epoch"] if run.has_completed_epoch else 0
    if epochs is not None and epochs < completed:
        raise S2SDError(
            f"--epochs {epochs} is below the {completed} epochs {run.path} has completed; "
            f"pass --epochs {completed} or more"
        )
    if epochs is not None and epochs != cfg.epochs:
        cfg = replace(cfg, epochs=epochs)
        if is_main_process():  # the folder must keep describing the run
            run.set_epochs(epochs)
    if not completed:
        log.warning("%s completed no epoch before it stopped: starting it over", run.path)
    with stopping(run):
        return Trainer(cfg, run, resume=bool(completed)).fit()


@contextmanager
def stopping(run: RunDir):
    """Leave the process group on the way out, and turn Ctrl-C into a message that says how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        saved = (
            f"every completed epoch is saved; continue with: s2sd train --resume {run.path}"
            if run.has_completed_epoch
            else f"no epoch had completed; s2sd train --resume {run.path} starts over"
        )
        raise Interrupted(f"interrupted: {saved}") from None
    finally:
        run.release()
        shutdown_distributed()
