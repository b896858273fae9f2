"""``s2sd train``: flags -> TrainConfig -> :func:`s2sd_deploy.training.trainer.train`.

The options are generated from :class:`~s2sd_deploy.training.config.TrainConfig`'s fields (their help
text, panel and type) and their defaults from the dataclass and the dataset presets, so ``--help`` always
shows what a run will use.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..training.config import TrainConfig, default_text, field_type, flag
from .options import int_list

EXAMPLES = """
Examples:

  s2sd train                                   # S2SD on the bundled glyphs, ~2 minutes on 2 CPU cores

  s2sd train --no-s2sd --seed 1                # the plain baseline

  s2sd train --validation-classes 50 --lr 3e-4  # choose the lr on 50 held-out Latin classes, test scripts unseen

  s2sd train --dataset cub200 --data-root ~/data/CUB_200_2011 --pretrained IMAGENET1K_V1 --backbone resnet50

  s2sd train --config train/cub200-r50-128-multisimilarity-msdfa.toml --data-root ~/data/CUB_200_2011

  s2sd train --resume runs/glyphs-msdfa-20261125-101500

  torchrun --nproc_per_node 2 -m s2sd_deploy.cli train --epochs 1
"""

HELP = (
    "Train an embedding model with S2SD teacher heads; write a self-contained run directory.\n\n"
    "Defaults are the paper's except where the dataset's preset says otherwise (shown after ';'). "
    "Options given on the command line override --config." + EXAMPLES
)

CLI_TYPES = {int: int, float: float, str: str, bool: bool, list: str}  # lists are comma-separated on the command line


def _option(f: dataclasses.Field) -> inspect.Parameter:
    """The ``--flag`` of one config field; ``None`` means "not given", so lower layers keep their values."""
    kind = field_type(f)
    names = [f"{flag(f.name)}/--no-{f.name.replace('_', '-')}"] if kind is bool else []
    help_text = f.metadata["help"]
    if f.metadata.get("choices"):
        help_text += f" One of: {', '.join(f.metadata['choices'])}."
    option = typer.Option(*names, help=help_text, show_default=default_text(f), rich_help_panel=f.metadata["panel"])
    annotation = Annotated[Optional[CLI_TYPES[kind]], option]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _run_options() -> list[inspect.Parameter]:
    config = typer.Option(
        help="TOML file with the same options (dashes or underscores); flags override it.",
        rich_help_panel="Run",
        show_default=False,
    )
    resume = typer.Option(
        help="Continue RUN after its last complete epoch (every other option but --epochs is the run's own).",
        rich_help_panel="Run",
        show_default=False,
    )
    return [
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], config]
        ),
        inspect.Parameter(
            "resume", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], resume]
        ),
    ]


def train(config: Path | None = None, resume: Path | None = None, **options) -> None:
    from ..training.config import build_train_config

    if resume is not None:
        from ..training.trainer import resume as resume_run

        summary = resume_run(resume, options.get("epochs"))
    else:
        for f in dataclasses.fields(TrainConfig):
            if field_type(f) is list:
                options[f.name] = int_list(options.get(f.name), flag(f.name))
        cfg = build_train_config(options, config)
        from ..training.trainer import train as train_run

        summary = train_run(cfg)
    print_summary(summary)


def print_summary(summary: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 speaks
        return
    final = summary.get("final", {})
    typer.echo(
        f"Recall@1 {final.get('recall@1', float('nan')):.4f}  NMI {final.get('nmi', float('nan')):.4f}  "
        f"mAP@R {final.get('map@r', float('nan')):.4f}  (final epoch, {summary['evaluated_on']} classes)"
    )
    shipped = summary["shipped"]
    typer.echo(f"shipped checkpoint: {shipped['checkpoint']} (epoch {shipped['epoch']}): {shipped['rule']}")
    typer.echo(f"wall time {summary['wall_time_s']:.0f} s, peak memory {summary['peak_memory_mb']:.0f} MB")
    typer.echo(f"run: {summary['run_dir']}")


def register(app: typer.Typer) -> None:
    parameters = _run_options() + [_option(f) for f in dataclasses.fields(TrainConfig)]
    train.__signature__ = inspect.Signature(parameters)
    train.__annotations__ = {p.name: p.annotation for p in parameters}  # Typer reads both
    app.command("train", help=HELP, no_args_is_help=False)(train)
