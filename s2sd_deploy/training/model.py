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

from ..errors import S2SDError


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
    raise S2SDError(
        f"backbone {name!r} has no known feature extractor; choose one of: {', '.join(available_backbones())}"
    )


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
    """``MLP_k = Linear(F, d_k) -> ReLU -> Linear(d_k, d_k)``, as in the paper."""

    def __init__(self, in_features: int, dim: int):
        super().__init__(nn.Linear(in_features, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


def pooled_features(
    backbone: nn.Module, images: torch.Tensor, pool_aggregation: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """f (B, F), average-pooled, and the teachers' input f' (f, or avg+max pooled with pool aggregation)."""
    feature_map = backbone(images)  # (B, F, h, w)
    pooled = feature_map.mean(dim=(2, 3))
    return pooled, pooled + feature_map.amax(dim=(2, 3)) if pool_aggregation else pooled


class DeployedModel(nn.Module):
    """What ships: backbone + student head, and optionally one teacher for re-ranking; nothing else.

    It holds only the parts it runs, so an export of it carries no other weights; the training model
    builds it from its own parts (:meth:`EmbeddingModel.deployed`), so both run the same code.
    """

    def __init__(
        self, backbone: nn.Module, student: nn.Linear, teacher: nn.Module | None = None, pool_aggregation: bool = False
    ):
        super().__init__()
        self.backbone, self.student, self.teacher, self.pool_aggregation = backbone, student, teacher, pool_aggregation

    def forward(self, images: torch.Tensor):
        """Student embeddings (B, d), or (student, teacher (B, d_k)) when a teacher is attached."""
        pooled, teacher_input = pooled_features(self.backbone, images, self.pool_aggregation)
        embeddings = F.normalize(self.student(pooled), dim=-1)
        if self.teacher is None:
            return embeddings
        return embeddings, F.normalize(self.teacher(teacher_input), dim=-1)


class EmbeddingModel(nn.Module):
    """Backbone + student head (+ teacher heads while training with S2SD).

    :meth:`forward` gives every head (training); :meth:`deployed` is what ships. Export wraps the
    deployed model and evaluation embeds with it, so the reported Recall@1 and the exported model
    come from one forward.
    """

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

    @property
    def largest_teacher(self) -> nn.Module | None:
        """The teacher with the most dimensions (the one exported for re-ranking), None without teachers."""
        return max(self.teachers, key=lambda head: head[-1].out_features, default=None)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        pooled, teacher_input = pooled_features(self.backbone, images, self.pool_aggregation)
        embeddings = F.normalize(self.student(pooled), dim=-1)
        teachers = [F.normalize(head(teacher_input), dim=-1) for head in self.teachers]
        return ModelOutput(embeddings, teachers, teacher_input)

    def deployed(self, with_teacher: bool = False) -> DeployedModel:
        """The shipped model, sharing this model's weights: the student (and the largest teacher with_teacher)."""
        if with_teacher and self.largest_teacher is None:
            raise S2SDError("--with-teacher: this run has no teacher heads (it was trained with --no-s2sd)")
        teacher = self.largest_teacher if with_teacher else None
        return DeployedModel(self.backbone, self.student, teacher, self.pool_aggregation)


def feature_dim_of(backbone: nn.Module) -> int:
    """Channels of the backbone's feature map, found with one small forward pass."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        dim = backbone(torch.zeros(1, 3, 64, 64)).shape[1]
    backbone.train(was_training)
    return dim


def build_embedding_model(
    backbone: str,
    embed_dim: int,
    target_dims: list[int] = (),
    pool_aggregation: bool = False,
    freeze_bn: bool = False,
    pretrained: str | None = None,
    weights: str | None = None,
) -> EmbeddingModel:
    """An :class:`EmbeddingModel` on a torchvision backbone named in its registry."""
    network = build_backbone(backbone, pretrained, weights)
    return EmbeddingModel(network, feature_dim_of(network), embed_dim, list(target_dims), pool_aggregation, freeze_bn)


def build_model(cfg) -> EmbeddingModel:
    """The model a :class:`~s2sd_deploy.training.config.TrainConfig` describes (teachers only with S2SD)."""
    return build_embedding_model(
        cfg.backbone,
        cfg.embed_dim,
        target_dims=list(cfg.target_dims) if cfg.s2sd else [],
        pool_aggregation=bool(cfg.pool_aggregation) and cfg.s2sd,
        freeze_bn=bool(cfg.freeze_bn),
        pretrained=cfg.pretrained,
        weights=cfg.weights,
    )
