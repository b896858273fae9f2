"""Run directories and checkpoints, written atomically.

A checkpoint is one safetensors file. Its tensors are prefixed by what they belong to:
``backbone.``, ``student.``, ``teachers.`` (the model), ``criterion.`` (learnable loss
parameters such as margin betas) and ``optimizer.``. Non-tensor training state (epoch, step,
optimiser hyper-parameters, sampler state) is JSON in the file's metadata, so nothing is ever
unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from . import __version__
from .errors import S2SDError

CHECKPOINT_FORMAT = "s2sd-checkpoint/1"
MODEL_PREFIXES = ("backbone.", "student.", "teachers.")
BEST, LAST = "best.safetensors", "last.safetensors"


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise S2SDError(f"{path} is not valid JSON: {error}") from None


def _flatten(prefix: str, value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors out of a nested structure into ``tensors``; return the JSON-able rest."""
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
    """Write a checkpoint atomically (see the module docstring for its layout)."""
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
        save_file(tensors, str(tmp), metadata=metadata)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint: ``model``, ``criterion``, ``optimizer`` and ``training_state``."""
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


def student_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The deployed part of a model state dict: backbone and student, no teachers."""
    return {k: v for k, v in model_state.items() if k.startswith(("backbone.", "student."))}
