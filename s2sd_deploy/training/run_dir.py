"""The run directory of ``s2sd train``, in one class: its paths, config, metrics, summary, curves and checkpoints.

A run directory holds ``config.json`` (the resolved :class:`TrainConfig` plus provenance),
``best.safetensors`` and ``last.safetensors``, ``metrics.jsonl`` (one row per epoch), ``summary.json``
and ``curves.png``. Every file is written atomically.

A checkpoint is one safetensors file. Its tensors are prefixed by what they belong to:
``backbone.``, ``student.``, ``teachers.`` (the model), ``criterion.`` (learnable loss parameters such as
margin betas) and ``optimizer.``. Non-tensor training state (epoch, step, optimiser hyper-parameters) is
JSON in the file's metadata, so nothing is ever unpickled.

Reading a run's JSON files needs no torch (``s2sd report`` runs without it); torch and safetensors are imported
where checkpoints are read or written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..atomic_files import atomic_path, read_json, remove_temporary_files, write_json_atomic, write_text_atomic
from ..errors import S2SDError
from ..locks import ExclusiveLock
from ..plots import pyplot, save_figure
from .config import TrainConfig, migrate_v1

if TYPE_CHECKING:
    import torch

    from .model import EmbeddingModel

log = logging.getLogger(__name__)

RUN_FORMAT = "s2sd-run/2"
OLD_FORMATS = {"s2sd-run/1": migrate_v1}  # format -> migration of its config to today's fields
CHECKPOINT_FORMAT = "s2sd-checkpoint/1"
MODEL_PREFIXES = ("backbone.", "student.", "teachers.")
BEST, LAST = "best.safetensors", "last.safetensors"


class RunDir:
    """One run directory. ``RunDir(path)`` names it; reading validates it and says what is wrong."""

    CONFIG, METRICS, SUMMARY, CURVES, LOCK = "config.json", "metrics.jsonl", "summary.json", "curves.png", ".lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run, its config.json read and validated."""
        run = cls(path)
        if not run.path.is_dir():
            raise S2SDError(f"run directory not found: {run.path}")
        run.config  # noqa: B018  (reads and validates config.json now, not on first use)
        return run

    @staticmethod
    def latest(runs_dir: str | Path = "runs") -> RunDir | None:
        """The most recently finished run under ``runs_dir`` (it has a summary.json), if any."""
        runs_dir = Path(runs_dir)
        finished = [p.parent for p in runs_dir.glob(f"*/{RunDir.SUMMARY}")] if runs_dir.is_dir() else []
        return RunDir(max(finished, key=lambda p: (p / RunDir.SUMMARY).stat().st_mtime)) if finished else None

    # --- claiming a run for one training process ------------------------------------------------------
    def claim(self) -> None:
        """Lock the run for this process (the lock dies with it, even when killed) and clear what interrupted
        writes left; another process that holds the run makes this a clear error instead of a silent overwrite."""
        self._created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = ExclusiveLock(self.path / self.LOCK).acquire(
            f"{self.path} is in use by another s2sd train (pid {{pid}}); wait for it to finish, "
            f"or choose another --run-name"
        )
        for leftover in remove_temporary_files(self.path):
            log.info("removed %s, left by an interrupted write", leftover)

    def discard(self) -> None:
        """Remove a run that failed before its first epoch: its files, its lock, and the folders it created."""
        self.clear()
        self.release()
        (self.path / self.LOCK).unlink(missing_ok=True)
        for folder in getattr(self, "_created", []):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def release(self) -> None:
        """Give the run back (training ended); a killed process releases it by dying."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def has_completed_epoch(self) -> bool:
        return (self.path / LAST).is_file()

    def clear(self) -> None:
        """Delete what a run that never completed an epoch wrote, so it can start over (the lock stays)."""
        for name in (self.CONFIG, self.METRICS, self.SUMMARY, self.CURVES, BEST, LAST):
            (self.path / name).unlink(missing_ok=True)
        for name in ("_config_file", "config", "meta"):
            self.__dict__.pop(name, None)

    # --- config.json ---------------------------------------------------------------------------
    def write_config(self, cfg: TrainConfig, provenance: dict[str, Any]) -> None:
        write_json_atomic(
            self.path / self.CONFIG,
            {"format": RUN_FORMAT, **provenance, "config": cfg.to_dict(), "config_hash": cfg.hash()},
        )
        self.__dict__.pop("_config_file", None)

    def set_epochs(self, epochs: int) -> TrainConfig:
        """Extend (or shorten) the run: config.json keeps describing what the folder holds."""
        cfg = replace(self.config, epochs=epochs)
        write_json_atomic(
            self.path / self.CONFIG,
            {**self._config_file, "format": RUN_FORMAT, "config": cfg.to_dict(), "config_hash": cfg.hash()},
        )
        for name in ("_config_file", "config", "meta"):
            self.__dict__.pop(name, None)
        return cfg

    @cached_property
    def _config_file(self) -> dict:
        path = self.path / self.CONFIG
        data = read_json(path)
        found = data.get("format") if isinstance(data, dict) else None
        if found != RUN_FORMAT and found not in OLD_FORMATS:
            raise S2SDError(
                f"{path} is not an s2sd run of format {RUN_FORMAT} (found {found!r}); it was written by an "
                f"incompatible version"
            )
        if not isinstance(data.get("config"), dict):
            raise S2SDError(f"{path} has no 'config' object: the file is damaged; restore it or start a new run")
        return data

    @cached_property
    def config(self) -> TrainConfig:
        data = self._config_file
        values = OLD_FORMATS[data["format"]](data["config"]) if data["format"] in OLD_FORMATS else data["config"]
        cfg = TrainConfig.from_dict(values, source=str(self.path / self.CONFIG))
        if cfg.augmentation == "affine" and cfg.hflip:  # recorded by earlier versions; that augmentation never flips
            cfg = replace(cfg, hflip=False)
        return cfg

    @cached_property
    def meta(self) -> dict:
        """config.json without the config: format, run id, versions, dataset fingerprint, ..."""
        return {k: v for k, v in self._config_file.items() if k != "config"}

    @property
    def run_id(self) -> str:
        return self.meta.get("run_id", self.path.name)

    # --- metrics, summary, curves -----------------------------------------------------------------
    def write_metrics(self, history: list[dict]) -> None:
        write_text_atomic(self.path / self.METRICS, "".join(json.dumps(row) + "\n" for row in history))

    def metrics(self) -> list[dict]:
        path = self.path / self.METRICS
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.path / self.SUMMARY, summary)

    @property
    def finished(self) -> bool:
        return (self.path / self.SUMMARY).is_file()

    def summary(self) -> dict:
        if not self.finished:
            raise S2SDError(
                f"{self.path} has no {self.SUMMARY}: the run has not finished "
                f"(resume it with s2sd train --resume {self.path})"
            )
        return read_json(self.path / self.SUMMARY)

    def write_curves(self, history: list[dict]) -> None:
        """Training loss and evaluation metrics per epoch, as one PNG."""
        figure, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4))
        trained = [r for r in history if "loss" in r]  # epoch 0 (untrained) has no training loss
        left.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], marker="o")

        left.set(xlabel="epoch", ylabel="training loss", title="loss")
        evaluated = [r for r in history if "recall@1" in r]
        for key in ("recall@1", "nmi", "map@r"):
            right.plot([r["epoch"] for r in evaluated], [r[key] for r in evaluated], marker="o", label=key)
        right.set(xlabel="epoch", title="evaluation metrics (unseen classes)")
        right.legend()
        save_figure(figure, self.path / self.CURVES)

    # --- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, name: str, **state) -> None:
        save_checkpoint(self.path / name, **state)

    def copy_checkpoint(self, source: str, name: str) -> None:
        """Write checkpoint ``name`` atomically as a copy of ``source``, without serialising the state again."""
        with atomic_path(self.path / name) as tmp:
            shutil.copyfile(self.path / source, tmp)

    def load_checkpoint(self, name: str) -> dict[str, Any]:
        return load_checkpoint(self.path / name)

    def select_checkpoint(self, which: str = "shipped") -> tuple[Path, dict]:
        """The checkpoint file to load and how it was chosen: ``{"checkpoint", "epoch", "rule"}``.

        ``shipped`` is the one training chose without the test classes (summary.json); ``best`` and ``last``
        are the files of those names; anything else is a checkpoint file of the run.
        """
        if which == "shipped":
            if not self.finished:
                raise S2SDError(
                    f"{self.path} has no {self.SUMMARY}: the run has not finished, so it has no shipped "
                    f"checkpoint; finish it with s2sd train --resume {self.path}, or pass --checkpoint last"
                )
            shipped = self.summary().get("shipped")
            if not shipped:
                raise S2SDError(
                    f"{self.path / self.SUMMARY} names no shipped checkpoint (run format "
                    f"{self.meta.get('format')}, before checkpoints were chosen without the test classes); "
                    f"pass --checkpoint last or --checkpoint best"
                )
            path, selection = self.path / shipped["checkpoint"], dict(shipped)
        else:
            names = {"best": BEST, "last": LAST}
            path = self.path / names[which] if which in names else Path(which)
            selection = {"checkpoint": path.name, "rule": f"chosen by the user (--checkpoint {which})"}
        if not path.is_file():
            raise S2SDError(f"{path} not found: the run has no {which} checkpoint (did training finish an epoch?)")
        return path, selection

    def load_model(self, which: str = "shipped") -> tuple[EmbeddingModel, dict]:
        """The trained model (with its teachers) in eval mode on the CPU, and its selection record."""
        from .model import build_model

        path, selection = self.select_checkpoint(which)
        checkpoint = load_checkpoint(path)
        selection.setdefault("epoch", checkpoint["training_state"].get("state", {}).get("epoch"))
        # The checkpoint holds every weight: do not download or read the initial ones again.
        model = build_model(replace(self.config, pretrained=None, weights=None))
        load_matching(model, checkpoint["model"], path, self.path / self.CONFIG)
        return model.eval(), selection


def load_matching(module: torch.nn.Module, state: dict, path: Path, config_path: Path, strict: bool = False) -> None:
    """``module.load_state_dict(state)``, with an error naming the file when the shapes or names differ."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=strict)
    except RuntimeError as error:  # size mismatches, or any mismatch when strict
        detail = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise S2SDError(f"{path} does not match {config_path} ({detail}): it belongs to another run or model") from None
    if missing or unexpected:
        raise S2SDError(
            f"{path} does not match {config_path} (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            f"it belongs to another run or model"
        )


# --- the checkpoint file format ---------------------------------------------------------------------
def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors out of a nested structure into ``tensors``; return the JSON-able rest."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        return {"__dict__": [[k, _flatten(f"{prefix}.{k}", v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_flatten(f"{prefix}.{i}", v, tensors) for i, v in enumerate(value)]
    return value


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict) and "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if isinstance(value, dict) and "__dict__" in value:
        return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    return value


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    criterion_state: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
    training_state: dict | None = None,
) -> None:
    """Write a checkpoint atomically (see the module docstring for its layout). A full disk is an OSError naming
    ``path``, as for every other file (safetensors reports it as its own error type)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
    tensors.update({f"criterion.{k}": v.detach().cpu().contiguous() for k, v in (criterion_state or {}).items()})
    optimizer_meta = _flatten("optimizer", optimizer_state, tensors) if optimizer_state else None
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "package_version": __version__,
        "optimizer": json.dumps(optimizer_meta),
        "training_state": json.dumps(training_state or {}),
    }
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:
            raise as_os_error(error, path) from None


def as_os_error(error: Exception, path: str | Path) -> Exception:
    """safetensors' I/O failure ("... (os error 28)") as the OSError it wraps, naming ``path``."""
    found = re.search(r"os error (\d+)", str(error))
    if not found:
        return error
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint: ``model``, ``criterion``, ``optimizer`` and ``training_state``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise S2SDError(f"{path} is not a readable safetensors checkpoint: {error}") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise S2SDError(
            f"{path} is not an s2sd checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found {metadata.get('format')!r}); it was written by another tool or version"
        )
    optimizer_meta = json.loads(metadata.get("optimizer") or "null")
    return {
        "model": {k: v for k, v in tensors.items() if k.startswith(MODEL_PREFIXES)},
        "criterion": {k.removeprefix("criterion."): v for k, v in tensors.items() if k.startswith("criterion.")},
        "optimizer": _unflatten(optimizer_meta, tensors) if optimizer_meta else None,
        "training_state": json.loads(metadata.get("training_state") or "{}"),
        "package_version": metadata.get("package_version"),
    }
