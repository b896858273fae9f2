"""Typed configuration of ``s2sd train``, saved with every run.

A configuration is built in layers, each overriding the one before:
dataclass defaults (the paper's setup) -> the dataset's preset -> a TOML file -> CLI flags.
``config.json`` in a run directory holds the resolved result, so a run is reproducible from its
folder alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import S2SDError

DATASETS = ("digits", "cub200", "cars196", "sop", "imagefolder")
CRITERIA = ("multisimilarity", "margin", "triplet")
VARIANTS = ("dsd", "msd", "msdf", "msdfa")
OPTIMIZERS = ("adam", "adamw", "sgd")
SAMPLERS = ("replacement", "distinct")

# The paper's ablation (SPEC.md): target dims, feature distillation, max+avg pooled teacher input.
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "dsd": dict(target_dims=[2048], feature_distill=False, pool_aggregation=False),
    "msd": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=False, pool_aggregation=False),
    "msdf": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=True, pool_aggregation=False),
    "msdfa": dict(target_dims=[512, 1024, 1536, 2048], feature_distill=True, pool_aggregation=True),
}

# Digits is tiny and trained from scratch: the paper's lr 1e-5, 150 epochs, 224 px and a
# 1000-iteration delay would not train in the 3-minute budget of `s2sd train` with no arguments.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
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


@dataclass
class TrainConfig:
    """Everything ``s2sd train`` needs; defaults are the paper's (SPEC.md) unless noted."""

    # data
    dataset: str = "digits"
    data_root: str | None = None  # required for every dataset but digits
    image_size: int = 224  # crop fed to the network (paper: 224)
    resize_size: int = 256  # test-time resize before the centre crop (paper: 256)
    crop_scale_min: float = 0.08  # RandomResizedCrop's lower scale bound (torchvision default)
    hflip: bool = True
    skip_bad_images: bool = False  # skip and count undecodable images instead of failing
    validation_classes: int = 0  # >0: train without the last N training classes and evaluate on them
    num_workers: int = 4
    # model
    backbone: str = "resnet50"
    embed_dim: int = 128
    pretrained: str | None = None  # torchvision weights name; the paper's: IMAGENET1K_V1 (DEFAULT is V2)
    weights: str | None = None  # local backbone state dict (.safetensors or torch file)
    freeze_bn: bool | None = None  # None: frozen for resnet50 as in the paper, trained otherwise
    # criterion
    criterion: str = "multisimilarity"
    ms_pos_weight: float = 2.0
    ms_neg_weight: float = 40.0  # pytorch-metric-learning defaults to 50; the paper uses 40
    ms_threshold: float = 0.5
    ms_mining_margin: float = 0.1
    margin: float = 0.2  # margin and triplet losses
    margin_beta: float = 1.2
    dw_lower_cutoff: float = 0.5  # distance-weighted sampling
    dw_upper_cutoff: float | None = None  # the reference leaves its 1.4 cut-off off: cutting made results worse
    # S2SD
    s2sd: bool = True  # False: the plain baseline, no teachers
    variant: str = "msdfa"
    target_dims: list[int] | None = None  # None: from the variant
    feature_distill: bool | None = None  # None: from the variant
    pool_aggregation: bool | None = None  # None: from the variant
    distill_weight: float = 50.0
    temperature: float = 1.0
    feature_weight: float = 50.0
    feature_delay: int = 1000  # training iterations before feature distillation starts
    # optimisation
    optimizer: str = "adam"
    lr: float = 1e-5
    weight_decay: float = 4e-4  # backbone and student head
    teacher_weight_decay: float = 0.0  # the reference trains the teacher MLPs without weight decay
    criterion_lr: float | None = None  # margin betas; None: 5e-4 for the baseline, lr under S2SD (reference)
    momentum: float = 0.9  # sgd only
    lr_steps: list[int] = field(default_factory=list)  # epochs at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.3
    epochs: int = 150
    batch_size: int = 112
    samples_per_class: int = 2
    sampler: str = "replacement"  # reference: classes and their samples drawn with replacement; or distinct
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # mixed precision, GPU only; the reference trains in fp32
    eval_every: int = 1  # epochs between evaluations; the last epoch is always evaluated
    recall_ks: list[int] | None = None  # None: 1,2,4,8 (1,10,100 for sop)
    # output
    out_dir: str = "runs"
    run_name: str | None = None  # None: <dataset>-<variant>-<timestamp>

    # --- derived values -------------------------------------------------------------------
    def resolved(self) -> TrainConfig:
        """Return a copy with every ``None`` that has a rule filled in, validated."""
        cfg = dataclasses.replace(self)
        variant = VARIANT_SETTINGS[cfg.variant] if cfg.variant in VARIANT_SETTINGS else {}
        for key in ("target_dims", "feature_distill", "pool_aggregation"):
            if getattr(cfg, key) is None and variant:
                setattr(cfg, key, variant[key])
        if cfg.freeze_bn is None:
            cfg.freeze_bn = cfg.backbone == "resnet50"
        if cfg.criterion_lr is None:
            cfg.criterion_lr = cfg.lr if cfg.s2sd else BASELINE_CRITERION_LR
        if cfg.recall_ks is None:
            cfg.recall_ks = [1, 10, 100] if cfg.dataset == "sop" else [1, 2, 4, 8]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _choice("dataset", self.dataset, DATASETS)
        _choice("criterion", self.criterion, CRITERIA)
        _choice("variant", self.variant, VARIANTS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("sampler", self.sampler, SAMPLERS)
        if self.dataset != "digits" and not self.data_root:
            raise S2SDError(f"--data-root is required for dataset {self.dataset!r}")
        if self.batch_size % self.samples_per_class:
            raise S2SDError(
                f"--batch-size {self.batch_size} must be a multiple of "
                f"--samples-per-class {self.samples_per_class}"
            )
        for name in ("embed_dim", "epochs", "batch_size", "samples_per_class", "image_size"):
            if getattr(self, name) < 1:
                raise S2SDError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.samples_per_class < 2:
            raise S2SDError("--samples-per-class must be at least 2: DML losses need positive pairs")
        if self.resize_size < self.image_size:
            raise S2SDError(f"--resize-size {self.resize_size} is smaller than --image-size {self.image_size}")
        if self.temperature <= 0:
            raise S2SDError(f"--temperature must be positive, got {self.temperature}")
        if self.s2sd and not self.target_dims:
            raise S2SDError("--target-dims is empty: S2SD needs at least one teacher (or pass --no-s2sd)")

    @property
    def classes_per_batch(self) -> int:
        return self.batch_size // self.samples_per_class

    # --- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "configuration") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise S2SDError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)

    def hash(self) -> str:
        """A short, stable fingerprint of the configuration (key order does not matter)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise S2SDError(f"invalid --{name.replace('_', '-')} {value!r}; choose one of: {', '.join(valid)}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; option names may use dashes or underscores."""
    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"config file not found: {path}")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise S2SDError(f"{path} is not valid TOML: {error}") from None
    # Recipes may group options in tables ([data], [model], ...); flatten them.
    flat: dict[str, Any] = {}
    for key, value in values.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for inner_key, inner_value in items:
            flat[inner_key.replace("-", "_")] = inner_value
    return flat


def build_train_config(
    overrides: dict[str, Any] | None = None, config_file: str | Path | None = None
) -> TrainConfig:
    """Layer defaults, the dataset preset, a TOML file and explicit overrides; then resolve.

    >>> build_train_config({"epochs": 1}).epochs
    1
    >>> build_train_config().backbone  # the digits preset
    'resnet18'
    """
    from_file = read_toml(config_file) if config_file else {}
    explicit = {**from_file, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    TrainConfig.from_dict(explicit, source=str(config_file or "options"))  # reject unknown keys
    dataset = explicit.get("dataset", TrainConfig.dataset)
    values = {**DATASET_PRESETS.get(dataset, {}), **explicit}
    return TrainConfig.from_dict(values).resolved()
