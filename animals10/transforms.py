"""Preprocessing stored with each model, and batched augmentation that runs on the training device.

Photos travel as (B, H, W, 3) uint8 (small, cheap to move); the float conversion, normalisation
and augmentation happen on the device that runs the model, batched.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from animals10.card import UNIT_MEAN, UNIT_STD, Preprocessing
from animals10.device import on_gpu


@dataclass(frozen=True)
class Augmentation:
    """Training-time changes. The defaults are the study's: flips, rotations up to 20 degrees and
    brightness 0.8-1.2. For stronger recipes: `crop_scale` adds random resized crops (share of the
    area kept), `contrast` / `saturation` colour jitter, `grayscale` the share of photos turned grey,
    `trivial_augment` one random operation of random strength per photo (TrivialAugment, Müller &
    Hutter 2021), and `mixup_alpha` / `cutmix_alpha` blend pairs of photos and their labels (half the
    batches each when both are set)."""

    horizontal_flip: bool = True
    rotation_degrees: float = 20.0
    brightness: tuple[float, float] = (0.8, 1.2)
    crop_scale: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    saturation: tuple[float, float] = (1.0, 1.0)
    grayscale: float = 0.0
    trivial_augment: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @classmethod
    def from_dict(cls, values: dict) -> Augmentation:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def to_model_input(
    images: torch.Tensor, preprocessing: Preprocessing, augmentation: Augmentation | None = None
) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, S, S) float32, augmented when given, resized to the model's size S
    when the photos are another size, normalised.

    The one conversion that training, evaluation, batch inference and serving share."""
    x = images.permute(0, 3, 1, 2)
    if augmentation is not None and augmentation.trivial_augment:
        x = trivial_augment(x)
    x = x.float().div_(255.0)
    if augmentation is not None:
        x = augment(x, augmentation)
    return fit_to_model(x, preprocessing)


def fit_to_model(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> resized to the model's size S when it is another size, normalised."""
    size = preprocessing.image_size
    if x.shape[-2:] != (size, size):  # photos decoded larger for sharper crops (TrainConfig.augment_size)
        x = F.interpolate(x, size=(size, size), mode=preprocessing.interpolation, antialias=True, align_corners=False)
    x = normalise(x, preprocessing)
    if on_gpu(x.device):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def normalise(x: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> normalised for the model."""
    if preprocessing.mean == UNIT_MEAN and preprocessing.std == UNIT_STD:
        return x
    mean = torch.tensor(preprocessing.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, augmentation: Augmentation) -> torch.Tensor:
    """Random per-image augmentation of (B, 3, H, W) floats in [0, 1], batched on x's device.

    Flip, rotation and random resized crop are one affine resampling per image."""
    batch = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch).mul_(high - low).add_(low).to(x.device)

    if augmentation.grayscale > 0:  # the luma in all three channels: the shape without the colour
        grey = torch.rand(batch).to(x.device) < augmentation.grayscale
        x = torch.where(grey.view(-1, 1, 1, 1), luma(x).expand_as(x), x)
    if augmentation.horizontal_flip:
        flip = torch.rand(batch).to(x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    low_area, high_area = augmentation.crop_scale
    if augmentation.rotation_degrees > 0 or low_area < 1.0:
        angle = uniform(-augmentation.rotation_degrees, augmentation.rotation_degrees) * (math.pi / 180.0)
        # A crop keeping `area` of the image, aspect ratio 3/4-4/3, anywhere inside it.
        area = uniform(low_area, high_area)
        log_ratio = uniform(math.log(3 / 4), math.log(4 / 3)) if low_area < 1.0 else torch.zeros_like(area)
        scale_x = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
        scale_y = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        shift_x = uniform(-1, 1) * (1 - scale_x)
        shift_y = uniform(-1, 1) * (1 - scale_y)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos * scale_x, -sin * scale_y, shift_x], 1),
                torch.stack([sin * scale_x, cos * scale_y, shift_y], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    low, high = augmentation.brightness
    if (low, high) != (1.0, 1.0):
        x = x * uniform(low, high).view(-1, 1, 1, 1).to(x.dtype)
    low, high = augmentation.contrast
    if (low, high) != (1.0, 1.0):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(low, high).view(-1, 1, 1, 1).to(x.dtype) + mean
    low, high = augmentation.saturation
    if (low, high) != (1.0, 1.0):
        gray = luma(x)
        x = (x - gray) * uniform(low, high).view(-1, 1, 1, 1).to(x.dtype) + gray
    return x.clamp_(0.0, 1.0)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) brightness as the eye weighs it (ITU-R BT.601)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


@functools.cache
def _trivial_augment_wide():
    # torchvision is imported here, for training only: importing it costs an inference replica seconds
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide()


def trivial_augment(images: torch.Tensor) -> torch.Tensor:
    """TrivialAugment on (B, 3, H, W) uint8: each photo gets its own random operation and strength."""
    transform = _trivial_augment_wide()
    return torch.stack([transform(image) for image in images])


def mix_batch(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    augmentation: Augmentation,
    generator: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix of a batch with itself reversed: (B, 3, H, W) inputs, (B,) class indices ->
    mixed inputs and (B, num_classes) soft targets. With both alphas set, each batch draws one of the two."""
    rng = generator or np.random.default_rng()
    targets = F.one_hot(labels, num_classes).to(x.dtype)
    choices = [
        kind
        for kind, alpha in (("mixup", augmentation.mixup_alpha), ("cutmix", augmentation.cutmix_alpha))
        if alpha > 0
    ]
    if not choices or len(labels) < 2:
        return x, targets
    kind = choices[rng.integers(len(choices))]
    partner = torch.arange(len(labels) - 1, -1, -1, device=x.device)
    if kind == "mixup":
        share = float(rng.beta(augmentation.mixup_alpha, augmentation.mixup_alpha))
        mixed = x * share + x[partner] * (1 - share)
    else:  # a box of the partner's photo pasted in, its area drawn so that the kept share is Beta-distributed
        height, width = x.shape[-2:]
        kept = float(rng.beta(augmentation.cutmix_alpha, augmentation.cutmix_alpha))
        box_h, box_w = round(height * math.sqrt(1 - kept)), round(width * math.sqrt(1 - kept))
        top, left = int(rng.integers(height - box_h + 1)), int(rng.integers(width - box_w + 1))
        mixed = x.clone()
        mixed[:, :, top : top + box_h, left : left + box_w] = x[partner, :, top : top + box_h, left : left + box_w]
        share = 1 - box_h * box_w / (height * width)
    return mixed, targets * share + targets[partner] * (1 - share)
