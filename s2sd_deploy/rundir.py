"""Reading a run directory written by ``s2sd train``.

A run directory holds ``config.json`` (the resolved :class:`TrainConfig` plus provenance),
``best.safetensors`` and ``last.safetensors`` (see :mod:`checkpoint`), ``metrics.jsonl``,
``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .checkpoint import BEST, LAST, load_checkpoint, read_json
from .config import TrainConfig
from .errors import S2SDError
from .model import EmbeddingModel, build_model

RUN_FORMAT = "s2sd-run/1"


@dataclass
class RunInfo:
    path: Path
    config: TrainConfig
    meta: dict  # config.json without the config: run id, versions, dataset fingerprint, ...

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]


def read_run(run_dir: str | Path) -> RunInfo:
    """Validate a run directory and read its configuration."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise S2SDError(f"run directory not found: {run_dir}")
    meta = read_json(run_dir / "config.json")
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise S2SDError(
            f"{run_dir / 'config.json'} is not an s2sd run of format {RUN_FORMAT} (found "
            f"{meta.get('format') if isinstance(meta, dict) else None!r}); it was written by an incompatible version"
        )
    config = TrainConfig.from_dict(meta["config"], source=str(run_dir / "config.json"))
    return RunInfo(run_dir, config, {k: v for k, v in meta.items() if k != "config"})


def select_checkpoint(run: RunInfo, which: str = "shipped") -> tuple[Path, dict]:
    """The checkpoint file to load and how it was chosen: ``{"checkpoint", "epoch", "rule"}``.

    ``shipped`` is the one training chose without the test classes (summary.json); ``best`` and ``last``
    are the files of those names; anything else is a checkpoint file of the run.
    """
    if which == "shipped":
        summary_path = run.path / "summary.json"
        if not summary_path.is_file():
            raise S2SDError(f"{run.path} has no summary.json: the run has not finished, so it has no shipped "
                            f"checkpoint; finish it with s2sd train --resume {run.path}, or pass --checkpoint last")
        shipped = read_json(summary_path).get("shipped")
        if not shipped:
            raise S2SDError(f"{summary_path} names no shipped checkpoint (written by an older version); "
                            f"pass --checkpoint last or --checkpoint best")
        path = run.path / shipped["checkpoint"]
        selection = dict(shipped)
    else:
        names = {"best": BEST, "last": LAST}
        path = run.path / names[which] if which in names else Path(which)
        selection = {"checkpoint": path.name, "rule": f"chosen by the user (--checkpoint {which})"}
    if not path.is_file():
        raise S2SDError(f"{path} not found: the run has no {which} checkpoint (did training finish an epoch?)")
    return path, selection


def load_trained_model(run_dir: str | Path, which: str = "shipped") -> tuple[EmbeddingModel, RunInfo, dict]:
    """The trained model of a run (with its teachers), in eval mode on the CPU, and its selection record."""
    run = read_run(run_dir)
    path, selection = select_checkpoint(run, which)
    checkpoint = load_checkpoint(path)
    selection.setdefault("epoch", checkpoint["training_state"].get("state", {}).get("epoch"))
    model = build_model(_without_pretrained(run.config))
    missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    if missing or unexpected:
        raise S2SDError(
            f"checkpoint of {run_dir} does not match its config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval(), run, selection


def _without_pretrained(config: TrainConfig) -> TrainConfig:
    """The checkpoint holds every weight: do not download or read the initial ones again."""
    from dataclasses import replace

    return replace(config, pretrained=None, weights=None)

