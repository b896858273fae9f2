"""Backbone registry, student head and S2SD teacher heads.

State-dict keys carry the part they belong to, so export can keep or drop parts by name:
``backbone.*`` (the torchvision network without its classifier), ``student.*`` (the deployed
``Linear(F, d)``) and ``teachers.<k>.*`` (one MLP per target dimension).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .errors import S2SDError


@dataclass
class ModelOutput:
    embeddings: torch.Tensor  # (B, d), L2-normalised student embedding
    teacher_embeddings: list[torch.Tensor]  # [(B, d_k)], L2-normalised
    features: torch.Tensor  # (B, F) teacher input f' (avg, or avg+max pooled)

    def to_float32(self) -> ModelOutput:
        return ModelOutput(self.embeddings.float(), [t.float() for t in self.teacher_embeddings], self.features.float())


def available_backbones() -> list[str]:
    """Torchvision classification models whose feature extractor we know how to cut out."""
    return [
        name
        for name in torchvision.models.list_models(module=torchvision.models)
        if name.startswith(("resnet", "resnext", "wide_resnet", "mobilenet", "efficientnet", "convnext", "regnet"))
    ]


def _feature_extractor(name: str, network: nn.Module) -> nn.Module:
    """Cut a classifier down to the part that returns a feature map (B, F, h, w)."""
    if hasattr(network, "fc") and hasattr(network, "avgpool"):  # resnet, resnext, regnet
        return nn.Sequential(*[m for n, m in network.named_children() if n not in ("avgpool", "fc")])
    if hasattr(network, "features"):  # mobilenet, efficientnet, convnext
        return network.features
    raise S2SDError(f"backbone {name!r} has no known feature extractor; choose one of: {', '.join(available_backbones())}")


def build_backbone(name: str, pretrained: str | None = None, weights_file: str | None = None) -> nn.Module:
    """A torchvision backbone by registry name, returning a feature map.

    ``pretrained`` names torchvision weights of that model (``IMAGENET1K_V1`` is the paper's ResNet-50;
    torchvision's ``DEFAULT`` is ``IMAGENET1K_V2``, a different network); they are read from torch's
    cache, downloaded once if missing. ``weights_file`` loads a local state dict of the full classifier.
    """
    if name not in available_backbones():
        raise S2SDError(f"unknown --backbone {name!r}; choose one of: {', '.join(available_backbones())}")
    weights = pretrained_weights(name, pretrained) if pretrained else None
    try:
        network = torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as error:  # urllib errors are OSErrors; a bad hash is a RuntimeError
        raise S2SDError(
            f"could not load the pretrained {name} weights {pretrained} ({error}); without network access, place "
            f"{weights.url} at {cached_weights_path(weights)}, or pass a local file with --weights"
        ) from None
    if weights_file:
        _load_full_classifier(network, name, weights_file)
    return _feature_extractor(name, network)


def pretrained_weights(model_name: str, weights_name: str):
    """torchvision's weights enum member ``weights_name`` of ``model_name``, or an error listing the valid names."""
    enum = torchvision.models.get_model_weights(model_name)
    valid = list(enum.__members__)  # with aliases such as DEFAULT
    if weights_name not in valid:
        raise S2SDError(f"invalid --pretrained {weights_name!r} for {model_name}; choose one of: {', '.join(valid)}")
    return enum[weights_name]


def cached_weights_path(weights) -> Path:
    """Where torch.hub (and so torchvision) looks for a weights file before downloading it."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _load_full_classifier(network: nn.Module, name: str, weights_file: str) -> None:
    state = load_state_dict_file(weights_file)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing:
        raise S2SDError(f"--weights {weights_file}: missing {len(missing)} {name} keys, e.g. {missing[:3]}")
    if unexpected:
        raise S2SDError(f"--weights {weights_file}: {len(unexpected)} keys are not {name}'s, e.g. {unexpected[:3]}")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a torch file without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise S2SDError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files surface as many exception types
        raise S2SDError(f"could not read weights from {path}: {error}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise S2SDError(f"{path} does not hold a state dict")
    return state


class TeacherHead(nn.Sequential):
    """``MLP_k = Linear(F, d_k) -> ReLU -> Linear(d_k, d_k)`` (SPEC.md)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__(nn.Linear(in_features, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


class EmbeddingModel(nn.Module):
    """Backbone + student head (+ teacher heads while training with S2SD)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        embed_dim: int,
        target_dims: list[int] = (),
        pool_aggregation: bool = False,
        freeze_bn: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.student = nn.Linear(feature_dim, embed_dim)
        self.teachers = nn.ModuleList(TeacherHead(feature_dim, dim) for dim in target_dims)
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.pool_aggregation = pool_aggregation
        self.freeze_bn = freeze_bn

    def train(self, mode: bool = True) -> EmbeddingModel:
        super().train(mode)
        if mode and self.freeze_bn:  # paper: BatchNorm statistics stay ImageNet's
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> ModelOutput:
        feature_map = self.backbone(images)  # (B, F, h, w)
        pooled = feature_map.mean(dim=(2, 3))  # f: (B, F)
        embeddings = F.normalize(self.student(pooled), dim=-1)
        teacher_input = pooled + feature_map.amax(dim=(2, 3)) if self.pool_aggregation else pooled
        teachers = [F.normalize(head(teacher_input), dim=-1) for head in self.teachers]
        return ModelOutput(embeddings, teachers, teacher_input)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The deployed path: student embeddings only, (B, d)."""
        pooled = self.backbone(images).mean(dim=(2, 3))
        return F.normalize(self.student(pooled), dim=-1)


def feature_dim_of(backbone: nn.Module) -> int:
    """Channels of the backbone's feature map, found with one small forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = backbone(torch.zeros(1, 3, 64, 64)).shape[1]
    backbone.train(was_training)
    return dim


def build_model(cfg) -> EmbeddingModel:
    """The model a :class:`~s2sd_deploy.config.TrainConfig` describes (teachers only with S2SD)."""
    backbone = build_backbone(cfg.backbone, cfg.pretrained, cfg.weights)
    return EmbeddingModel(
        backbone,
        feature_dim_of(backbone),
        cfg.embed_dim,
        target_dims=list(cfg.target_dims) if cfg.s2sd else [],
        pool_aggregation=bool(cfg.pool_aggregation) and cfg.s2sd,
        freeze_bn=bool(cfg.freeze_bn),
    )
