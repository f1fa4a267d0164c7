"""Preprocessing stored with each model, and batched augmentation that runs on the training device.

Photos travel as (B, H, W, 3) uint8 (small, cheap to move); the float conversion, normalisation
and augmentation happen on the device that runs the model, batched.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNIT_MEAN = (0.0, 0.0, 0.0)  # pixels stay in [0, 1], as the study's Rescaling(1/255)
UNIT_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: square input size in pixels and per-channel normalisation of [0, 1] pixels."""

    image_size: int = 128
    mean: tuple[float, float, float] = UNIT_MEAN
    std: tuple[float, float, float] = UNIT_STD

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        return cls(int(values["image_size"]), tuple(values["mean"]), tuple(values["std"]))


@dataclass(frozen=True)
class Augmentation:
    """Training-time changes, as in the study: flips, small rotations, brightness."""

    horizontal_flip: bool = True
    rotation_degrees: float = 20.0
    brightness: tuple[float, float] = (0.8, 1.2)

    def to_dict(self) -> dict:
        return asdict(self)


def to_model_input(images: torch.Tensor, preprocessing: Preprocessing, augmentation: Augmentation | None = None) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, augmented when given, normalised.

    The one conversion that training, evaluation, batch inference and serving share."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if augmentation is not None:
        x = augment(x, augmentation)
    x = normalise(x, preprocessing)
    if x.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def normalise(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> normalised for the model."""
    if preprocessing.mean == UNIT_MEAN and preprocessing.std == UNIT_STD:
        return x
    mean = torch.tensor(preprocessing.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, augmentation: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random per-image augmentation of (B, 3, H, W) floats in [0, 1], batched on x's device."""
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator).mul_(high - low).add_(low).to(x.device)

    if augmentation.horizontal_flip:
        flip = torch.rand(batch, generator=generator).to(x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if augmentation.rotation_degrees > 0:
        angle = uniform(-augmentation.rotation_degrees, augmentation.rotation_degrees) * (math.pi / 180.0)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    low, high = augmentation.brightness
    if (low, high) != (1.0, 1.0):
        x = (x * uniform(low, high).view(-1, 1, 1, 1).to(x.dtype)).clamp_(0.0, 1.0)
    return x
