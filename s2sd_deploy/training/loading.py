"""Images as tensors for training and evaluation: the torch Dataset and the torchvision transforms.

The eval transform is built from the run's :class:`~s2sd_deploy.serving.preprocessing.Preprocessing`, the
one definition that the ONNX metadata and the serving side follow too.
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from ..serving.images import open_image
from ..serving.preprocessing import Preprocessing
from .datasets import ImageSet


class LabelledImages(torch.utils.data.Dataset):
    """Decodes an :class:`ImageSet` item and applies a transform; returns (image, label)."""

    def __init__(self, images: ImageSet, transform: Callable):
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(open_image(self.images.sources[index])), int(self.images.labels[index])


def eval_transform(preprocessing: Preprocessing) -> Callable:
    """Paper: Resize(256) + CenterCrop(224) + ImageNet normalisation (as ``preprocessing`` says)."""
    return T.Compose([*eval_crop(preprocessing), T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)])


def eval_crop(preprocessing: Preprocessing) -> list[Callable]:
    """The resize of the shorter side and the centre crop that ``preprocessing`` describes."""
    return [
        T.Resize(preprocessing.resize_size, interpolation=T.InterpolationMode(preprocessing.interpolation)),
        T.CenterCrop(preprocessing.image_size),
    ]


def train_transform(cfg) -> Callable:
    """``crop``, the paper's: RandomResizedCrop(224) + horizontal flip. ``affine``, for glyphs: the eval crop, then
    a small rotation, scale, shift and shear, a thinner or thicker stroke, a slight blur. Then ImageNet
    normalisation. Randomness comes from torch's generator, which training seeds per (seed, epoch)."""
    preprocessing = cfg.preprocessing()
    if cfg.augmentation == "affine":
        steps = [
            *eval_crop(preprocessing),
            T.RandomAffine(degrees=8, translate=(0.08, 0.08), scale=(0.88, 1.12), shear=6),
            StrokeWidth(probability=0.4),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.2, 0.8))], p=0.3),
        ]
    else:
        steps = [T.RandomResizedCrop(cfg.image_size, scale=(cfg.crop_scale_min, 1.0))]
        if cfg.hflip:
            steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [T.ToTensor(), T.Normalize(preprocessing.mean, preprocessing.std)])


class StrokeWidth:
    """With ``probability``, thicken or thin bright strokes by one pixel (a 3x3 maximum or minimum filter)."""

    def __init__(self, probability: float):
        self.probability = probability

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(1).item() >= self.probability:
            return image
        thicker = torch.rand(1).item() < 0.5
        return image.filter(ImageFilter.MaxFilter(3) if thicker else ImageFilter.MinFilter(3))


def eval_loader(images: ImageSet, cfg, batch_size: int = 128) -> torch.utils.data.DataLoader:
    """Batches of (images, labels) in order, with the run's eval transform."""
    dataset = LabelledImages(images, eval_transform(cfg.preprocessing()))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=cfg.num_workers, shuffle=False)
