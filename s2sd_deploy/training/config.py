"""Typed configuration of ``s2sd train``, saved with every run; the one source of its options and defaults.

A configuration is built in layers, each overriding the one before:
dataclass defaults (the paper's setup) -> the dataset's preset -> a TOML file -> CLI flags.
``config.json`` in a run directory holds the resolved result, so a run is reproducible from its
folder alone. Every field carries its help text and panel as metadata: ``s2sd train --help`` is
generated from them and from the presets, so help and defaults cannot drift apart.

This module imports no torch: a bad option is refused before the slow imports start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import S2SDError
from ..serving.preprocessing import Preprocessing

BUNDLED_DATASETS = ("glyphs", "digits")  # rendered or shipped with the package: no --data-root
DATASETS = (*BUNDLED_DATASETS, "cub200", "cars196", "sop", "imagefolder")
AUGMENTATIONS = ("crop", "affine")
CRITERIA = ("multisimilarity", "margin", "triplet")
VARIANTS = ("dsd", "msd", "msdf", "msdfa")
OPTIMIZERS = ("adam", "adamw", "sgd")
SAMPLERS = ("replacement", "distinct")

# The paper's ablation: target dims, feature distillation, max+avg pooled teacher input.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "dsd": dict(target_dims=[2048], feature_distill=False, pool_aggregation=False),
    "msd": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=False, pool_aggregation=False),
    "msdf": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=True, pool_aggregation=False),
    "msdfa": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=True, pool_aggregation=True),
}

# The bundled datasets are trained from scratch on a CPU: the paper's lr 1e-5, 150 epochs, 224 px and a
# 1000-iteration delay would not train in the 3-minute budget of `s2sd train` with no arguments.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "glyphs": dict(
        backbone="resnet18",
        embed_dim=32,  # a small student, where the teachers can matter
        image_size=32,  # the rendered size: no resize, no crop
        resize_size=32,
        augmentation="affine",  # crops cut glyphs apart and a mirrored glyph is another character
        lr=1e-3,  # measured: untrained Recall@1 0.39 -> 0.82 after 8 epochs (bench/results/train_default.json)
        weight_decay=1e-4,
        epochs=8,  # 39 batches each; 2 minutes on 2 cores
        feature_delay=100,  # from the third epoch
        num_workers=0,  # images are in memory: worker processes would only compete for the 2 cores
    ),
    "digits": dict(
        backbone="resnet18",
        image_size=32,
        resize_size=36,
        crop_scale_min=0.5,  # the paper's 0.08 crops away most of a digit
        hflip=False,  # a mirrored digit is a different glyph
        lr=1e-4,  # 1e-3 overfits the 5 training classes within a few epochs (Recall@1 0.94 -> 0.60)
        weight_decay=1e-4,
        epochs=12,
        batch_size=80,
        samples_per_class=16,  # only 5 training classes: 2 per class would give batches of 10
        sampler="distinct",  # every batch holds all 5 classes; drawing 5 of 5 with replacement would miss some
        feature_delay=60,
        num_workers=0,
    ),
}

# The reference's lr for learnable criterion parameters of the plain criterion; under S2SD its objective
# puts every criterion parameter into the network's lr group instead.
BASELINE_CRITERION_LR = 5e-4

DATA, MODEL, LOSS, S2SD, OPTIM, RUN = "Data", "Model", "Loss", "S2SD", "Optimisation", "Run"

# Allowed ranges, checked for values from flags and files alike (lists item by item). Anything outside would
# crash later (a 0-d teacher, a 0-sized batch) or train nonsense (a NaN learning rate).
AT_LEAST = {
    "image_size": 8,
    "resize_size": 8,
    "validation_classes": 0,
    "num_workers": 0,
    "embed_dim": 1,
    "target_dims": 1,
    "feature_delay": 0,
    "lr_steps": 1,
    "epochs": 1,
    "batch_size": 2,
    "samples_per_class": 2,
    "seed": 0,
    "eval_every": 1,
    "recall_ks": 1,
    "weight_decay": 0,
    "teacher_weight_decay": 0,
    "distill_weight": 0,
    "feature_weight": 0,
    "margin": 0,
    "dw_lower_cutoff": 0,
    "momentum": 0,
    "ms_mining_margin": 0,
}
ABOVE = {
    "lr": 0,
    "criterion_lr": 0,
    "temperature": 0,
    "ms_pos_weight": 0,
    "ms_neg_weight": 0,
    "lr_gamma": 0,
    "crop_scale_min": 0,
    "margin_beta": 0,
    "dw_upper_cutoff": 0,
}
AT_MOST = {"crop_scale_min": 1}
BELOW = {"momentum": 1, "dw_lower_cutoff": 2}
TYPE_WORDS = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list of whole numbers",
}


def option(
    default: Any,
    help: str,
    panel: str,
    *,
    choices: tuple[str, ...] | None = None,
    default_text: str | None = None,
    factory=None,
) -> Any:
    """A config field with what ``--help`` shows: its help text, panel, choices and (for rules) default text."""
    metadata = {"help": help, "panel": panel, "choices": choices, "default_text": default_text}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything ``s2sd train`` needs; defaults are the paper's unless noted."""

    dataset: str = option("glyphs", "Dataset to train and evaluate on.", DATA, choices=DATASETS)
    data_root: str | None = option(
        None, "Folder of the dataset in its official layout (every dataset but glyphs and digits).", DATA
    )
    image_size: int = option(224, "Crop size fed to the network.", DATA)
    resize_size: int = option(256, "Test-time resize of the shorter side before the centre crop.", DATA)
    augmentation: str = option(
        "crop",
        "Training augmentation: crop (RandomResizedCrop and flips, the paper's) or affine (small rotation, "
        "scale and shift, stroke width, blur: for glyphs).",
        DATA,
        choices=AUGMENTATIONS,
    )
    crop_scale_min: float = option(0.08, "Lower scale bound of training's RandomResizedCrop.", DATA)
    hflip: bool | None = option(
        None,
        "Random horizontal flips in training (crop augmentation only: affine never flips).",
        DATA,
        default_text="on with --augmentation crop (digits off), off with affine",
    )
    skip_bad_images: bool = option(False, "Skip and count undecodable images instead of stopping.", DATA)
    validation_classes: int = option(
        0,
        "Hold out the last N training classes and evaluate on them instead of the test classes, so options "
        "(and the shipped checkpoint) are chosen without seeing the test classes.",
        DATA,
    )
    num_workers: int = option(4, "Data-loading processes.", DATA)

    backbone: str = option("resnet50", "torchvision model name, e.g. resnet50 (the paper's), resnet18.", MODEL)
    embed_dim: int = option(128, "Dimension d of the deployed student embedding.", MODEL)
    pretrained: str | None = option(
        None,
        "Start from these torchvision weights, e.g. IMAGENET1K_V1 (the reference's; DEFAULT is V2, another "
        "network). Offline, the error names the file to place in torch's cache.",
        MODEL,
        default_text="none (random)",
    )
    weights: str | None = option(
        None, "Local backbone weights: .safetensors, or a torch state dict (loaded with weights_only).", MODEL
    )
    freeze_bn: bool | None = option(
        None, "Keep BatchNorm in eval mode.", MODEL, default_text="on for resnet50 (the paper's), off otherwise"
    )

    criterion: str = option("multisimilarity", "Base DML criterion.", LOSS, choices=CRITERIA)
    ms_pos_weight: float = option(2.0, "Multisimilarity positive weight.", LOSS)
    ms_neg_weight: float = option(
        40.0, "Multisimilarity negative weight (pytorch-metric-learning's default is 50).", LOSS
    )
    ms_threshold: float = option(0.5, "Multisimilarity threshold.", LOSS)
    ms_mining_margin: float = option(0.1, "Multisimilarity pair-mining margin.", LOSS)
    margin: float = option(0.2, "Margin of the margin and triplet losses.", LOSS)
    margin_beta: float = option(1.2, "Initial per-class beta of the margin loss.", LOSS)
    dw_lower_cutoff: float = option(0.5, "Distance-weighted sampling: distances are clamped below at this.", LOSS)
    dw_upper_cutoff: float | None = option(
        None,
        "Distance-weighted sampling: never draw negatives farther than this.",
        LOSS,
        default_text="none (the reference leaves its 1.4 cut-off off: cutting made results worse)",
    )

    s2sd: bool = option(True, "Train with S2SD teachers (--no-s2sd: the plain baseline).", S2SD)
    variant: str = option(
        "msdfa",
        "The paper's ablation: dsd (one 2048-d teacher), msd (512-2048), msdf (+ feature "
        "distillation), msdfa (+ avg+max pooled teacher input).",
        S2SD,
        choices=VARIANTS,
    )
    target_dims: list[int] | None = option(
        None, "Teacher dimensions, comma-separated.", S2SD, default_text="from --variant: 512,1024,1536,2048; dsd 2048"
    )
    feature_distill: bool | None = option(
        None, "Distil the backbone features' similarities too.", S2SD, default_text="from --variant"
    )
    pool_aggregation: bool | None = option(
        None, "Teachers read avg+max pooled features.", S2SD, default_text="from --variant"
    )
    distill_weight: float = option(50.0, "Weight w of the relational distillation.", S2SD)
    temperature: float = option(1.0, "Softmax temperature T of the distillation.", S2SD)
    feature_weight: float = option(
        50.0, "Weight w_f of feature distillation (the paper uses 5 for SOP with margin).", S2SD
    )
    feature_delay: int = option(1000, "Training iterations before feature distillation starts.", S2SD)

    optimizer: str = option(
        "adam", "Optimiser (Adam adds weight decay to the gradient, as the reference does).", OPTIM, choices=OPTIMIZERS
    )
    lr: float = option(1e-5, "Learning rate of network and teachers.", OPTIM)
    weight_decay: float = option(4e-4, "Weight decay of backbone and student head.", OPTIM)
    teacher_weight_decay: float = option(0.0, "Weight decay of the teacher MLPs (the reference uses none).", OPTIM)
    criterion_lr: float | None = option(
        None,
        "Learning rate of learnable criterion parameters (margin betas).",
        OPTIM,
        default_text="5e-4 for --no-s2sd, --lr under S2SD (the reference's groups)",
    )
    momentum: float = option(0.9, "SGD momentum.", OPTIM)
    lr_steps: list[int] = option(
        None,
        "Epochs at which the lr is multiplied by --lr-gamma, comma-separated.",
        OPTIM,
        factory=list,
        default_text="none (constant, as in the reference)",
    )
    lr_gamma: float = option(0.3, "Factor of the step schedule.", OPTIM)
    epochs: int = option(150, "Training epochs.", OPTIM)
    batch_size: int = option(112, "Images per batch (= class draws x samples per class).", OPTIM)
    samples_per_class: int = option(2, "Images of each drawn class in a batch.", OPTIM)
    sampler: str = option(
        "replacement",
        "replacement: classes and their images drawn with replacement (the reference's); distinct: distinct classes.",
        OPTIM,
        choices=SAMPLERS,
    )
    seed: int = option(0, "Seed of initialisation, batches and augmentation.", OPTIM)
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N.", OPTIM)
    amp: bool = option(False, "Mixed precision on the GPU (the reference trains in fp32).", OPTIM)

    eval_untrained: bool = option(
        True, "Evaluate the untrained network first (logged as epoch 0), so the curves show what training adds.", RUN
    )
    eval_every: int = option(1, "Epochs between evaluations; the last epoch is always evaluated.", RUN)

    recall_ks: list[int] | None = option(
        None, "k of Recall@k, comma-separated; must include 1.", RUN, default_text="1,2,4,8; sop 1,10,100"
    )
    out_dir: str = option("runs", "Where run directories go.", RUN)
    run_name: str | None = option(
        None, "Name of the run directory (one path component).", RUN, default_text="<dataset>-<variant>-<time>"
    )

    # --- derived values -------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """Return a copy with every ``None`` that has a rule filled in, validated."""
        cfg = dataclasses.replace(self)
        cfg.validate_choices()
        for key, value in VARIANT_SETTINGS[cfg.variant].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.freeze_bn is None:
            cfg.freeze_bn = cfg.backbone == "resnet50"
        if cfg.hflip is None:  # config.json records what the run does: the affine augmentation never flips
            cfg.hflip = cfg.augmentation == "crop"
        if cfg.criterion_lr is None:
            cfg.criterion_lr = cfg.lr if cfg.s2sd else BASELINE_CRITERION_LR
        if cfg.recall_ks is None:
            cfg.recall_ks = [1, 10, 100] if cfg.dataset == "sop" else [1, 2, 4, 8]
        cfg.validate()
        return cfg

    def validate_choices(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise S2SDError(
                    f"invalid {flag(f.name)} {getattr(self, f.name)!r}; choose one of: {', '.join(choices)}"
                )

    def validate(self) -> None:
        """Every option in range and consistent with the others; the message names the option and the fix."""
        self.validate_choices()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in value if isinstance(value, list) else [value]:
                _check_range(f.name, item)
        if self.dataset not in BUNDLED_DATASETS and not self.data_root:
            raise S2SDError(f"--data-root is required for dataset {self.dataset!r}")
        if self.batch_size % self.samples_per_class:
            raise S2SDError(
                f"--batch-size {self.batch_size} must be a multiple of --samples-per-class {self.samples_per_class}"
            )
        if self.resize_size < self.image_size:
            raise S2SDError(f"--resize-size {self.resize_size} is smaller than --image-size {self.image_size}")
        if self.s2sd and not self.target_dims:
            raise S2SDError("--target-dims is empty: S2SD needs at least one teacher (or pass --no-s2sd)")
        if self.recall_ks is not None and 1 not in self.recall_ks:
            raise S2SDError(
                f"--recall-ks {format_value(self.recall_ks)} must include 1: Recall@1 chooses checkpoints "
                f"and is what every report leads with"
            )
        if self.hflip and self.augmentation == "affine":
            raise S2SDError("--hflip works with --augmentation crop only; the affine augmentation never flips")
        if self.dw_upper_cutoff is not None and self.dw_upper_cutoff <= self.dw_lower_cutoff:
            raise S2SDError(
                f"--dw-upper-cutoff {self.dw_upper_cutoff} must be above --dw-lower-cutoff {self.dw_lower_cutoff}"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise S2SDError(f"invalid --device {self.device!r}; choose one of: auto, cpu, cuda, cuda:N")
        _check_run_name(self.run_name)
        if Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise S2SDError(f"--out-dir {self.out_dir} is a file; run directories go into a folder")

    @property
    def classes_per_batch(self) -> int:
        return self.batch_size // self.samples_per_class

    def preprocessing(self) -> Preprocessing:
        """Evaluation's preprocessing of this run (see :mod:`s2sd_deploy.serving.preprocessing`)."""
        return Preprocessing(self.image_size, self.resize_size)

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> TrainConfig:
        """A config from plain values (a TOML file, config.json, flags); unknown names and wrong types are refused."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise S2SDError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
        for name, value in values.items():
            _check_type(fields[name], value, source)
        return cls(**values)

    def hash(self) -> str:
        """A short, stable fingerprint of the configuration (key order does not matter)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_type(f: dataclasses.Field, value: Any, source: str) -> None:
    kind = field_type(f)
    items = value if kind is list and isinstance(value, list) else [value]
    item_kind = int if kind is list else kind
    valid = (value is None and type(None) in typing.get_args(typing.get_type_hints(TrainConfig)[f.name])) or (
        (kind is not list or isinstance(value, list))
        and all(
            isinstance(item, item_kind) and not (item_kind in (int, float) and isinstance(item, bool)) for item in items
        )
    )
    if item_kind is float and not valid:  # whole numbers are numbers too
        valid = all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in items)
    if not valid:
        word = "a torchvision weights name such as IMAGENET1K_V1" if f.name == "pretrained" else TYPE_WORDS[kind]
        raise S2SDError(f"{source}: {f.name} must be {word}, got {value!r}")


def _check_range(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise S2SDError(f"{flag(name)} must be a finite number, got {value}")
    for bounds, holds, word in (
        (AT_LEAST, lambda v, b: v >= b, "at least"),
        (ABOVE, lambda v, b: v > b, "above"),
        (AT_MOST, lambda v, b: v <= b, "at most"),
        (BELOW, lambda v, b: v < b, "below"),
    ):
        if name in bounds and not holds(value, bounds[name]):
            raise S2SDError(f"{flag(name)} must be {word} {bounds[name]}, got {value}")


def _check_run_name(name: str | None) -> None:
    """A run name is one path component, so a run can never be written outside --out-dir."""
    if name is None:
        return
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise S2SDError(
            f"--run-name {name!r} must be one folder name (no '/', not '.' or '..'); "
            f"use --out-dir to choose where runs go"
        )


def flag(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def default_text(f: dataclasses.Field) -> str:
    """What ``--help`` shows as a field's default: its rule, or its value and every preset that changes it."""
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    shown = [format_value(value)]
    shown += [
        f"{dataset} {format_value(preset[f.name])}" for dataset, preset in DATASET_PRESETS.items() if f.name in preset
    ]
    return "; ".join(shown)


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def field_type(f: dataclasses.Field) -> type:
    """The value type of a field, without ``| None``: int, float, str, bool or list."""
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; option names may use dashes or underscores."""
    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"config file not found: {path}")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise S2SDError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as error:
        raise S2SDError(f"{path} is not valid TOML: {error}") from None
    # Recipes may group options in tables ([data], [model], ...); flatten them.
    flat: dict[str, Any] = {}
    for key, value in values.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for inner_key, inner_value in items:
            flat[inner_key.replace("-", "_")] = inner_value
    return flat


def build_train_config(overrides: dict[str, Any] | None = None, config_file: str | Path | None = None) -> TrainConfig:
    """Layer defaults, the dataset preset, a TOML file and explicit overrides; then resolve.

    >>> build_train_config({"epochs": 1}).epochs
    1
    >>> build_train_config().backbone  # the glyphs preset
    'resnet18'
    """
    from_file = read_toml(config_file) if config_file else {}
    explicit = {**from_file, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    TrainConfig.from_dict(explicit, source=str(config_file or "options"))  # reject unknown keys
    dataset = explicit.get("dataset", TrainConfig.dataset)
    values = {**DATASET_PRESETS.get(dataset, {}), **explicit}
    return TrainConfig.from_dict(values).resolved()


# --- run directories written by earlier versions ------------------------------------------------
def migrate_v1(values: dict[str, Any]) -> dict[str, Any]:
    """A config of run format 1 (before the reference-exact objective) in today's fields, saying what that
    run actually did: criterion parameters at ``margin_beta_lr``, the 1.4 cut-off, distinct-class batches,
    teacher weight decay as the network's, torchvision's DEFAULT weights when pretrained."""
    values = dict(values)
    if "margin_beta_lr" in values:
        values["criterion_lr"] = values.pop("margin_beta_lr")
    values.setdefault("dw_upper_cutoff", 1.4)
    values.setdefault("sampler", "distinct")
    values.setdefault("teacher_weight_decay", values.get("weight_decay", 4e-4))
    pretrained = values.get("pretrained")
    values["pretrained"] = "DEFAULT" if pretrained is True else (None if pretrained is False else pretrained)
    return values
