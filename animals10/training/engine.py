"""The training step and validation, in plain PyTorch: no Ray here. Batches are dicts of numpy arrays
as Ray Data yields them: `image` (B, S, S, 3) uint8, `label` (B,) int, `path` (B,), `error` (B,) str,
where a non-empty error marks a file that could not be decoded (it is skipped, and named)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animals10.calibration import calibration_sums, empty_sums
from animals10.card import Preprocessing
from animals10.device import autocast, on_gpu
from animals10.metrics import confusion_matrix
from animals10.transforms import Augmentation, mix_batch, to_model_input


@dataclass
class EpochTotals:
    """Sums over one worker's share of an epoch; workers add theirs up before metrics are taken."""

    loss_sum: float = 0.0
    num_correct: int = 0
    num_images: int = 0
    seconds: float = 0.0
    confusion: np.ndarray | None = None
    calibration: np.ndarray | None = None  # validation: calibration.calibration_sums, added up
    skipped: list[str] = field(default_factory=list)


def split_batch(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Good rows as (B, S, S, 3) uint8 and (B,) int64 tensors on `device`; paths of the bad rows."""
    errors = np.asarray(batch["error"], dtype=object)
    good = errors == ""
    skipped = [str(p) for p in np.asarray(batch["path"], dtype=object)[~good]]
    images = torch.from_numpy(np.ascontiguousarray(batch["image"][good]))
    labels = torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)[good])
    non_blocking = on_gpu(device)
    if non_blocking:
        images = images.pin_memory()
    return images.to(device, non_blocking=non_blocking), labels.to(device, non_blocking=non_blocking), skipped


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict],
    optimizer: torch.optim.Optimizer,
    preprocessing: Preprocessing,
    augmentation: Augmentation | None,
    device: torch.device,
    label_smoothing: float = 0.0,
    class_weights: torch.Tensor | None = None,
    num_classes: int | None = None,
    copies: int = 1,
) -> EpochTotals:
    """One pass over `batches`, each photo in `copies` differently augmented copies per step; the totals count
    photos, and a photo's training answer is its first copy's. With MixUp/CutMix (`num_classes` then required)
    the training accuracy counts hits on each photo's own label, whatever share of it the mixing kept."""
    totals = EpochTotals()
    start = time.perf_counter()
    model.train()
    for batch in batches:
        images, labels, skipped = split_batch(batch, device)
        totals.skipped += skipped
        # A batch of only bad files still takes a (zero) step: under DDP every worker must
        # join every gradient all-reduce, and the workers' batch counts are equal.
        weight = 1.0 if len(labels) else 0.0
        if not len(labels):
            images = torch.zeros((1, *batch["image"].shape[1:]), dtype=torch.uint8, device=device)
            labels = torch.zeros(1, dtype=torch.int64, device=device)
        photos = len(labels)
        if copies > 1:  # batch augmentation: the same photos, augmented several ways, in one step
            images, labels = images.repeat(copies, 1, 1, 1), labels.repeat(copies)
        x = to_model_input(images, preprocessing, augmentation)
        targets = labels
        if augmentation is not None and augmentation.mixes:
            x, targets = mix_batch(x, labels, num_classes, augmentation)  # (B, num_classes) soft targets
        with autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), targets, weight=class_weights, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        optimizer.step()
        if weight:  # per photo: its first copy's answer
            totals.loss_sum += loss.item() * photos
            totals.num_correct += int((logits[:photos].argmax(1) == labels[:photos]).sum())
            totals.num_images += photos
    totals.seconds = time.perf_counter() - start
    return totals


@torch.no_grad()
def validate(
    model: nn.Module,
    batches: Iterable[dict],
    preprocessing: Preprocessing,
    device: torch.device,
    num_classes: int,
) -> EpochTotals:
    """Loss and confusion matrix over `batches` (no collective ops: safe on any subset of workers)."""
    totals = EpochTotals(confusion=np.zeros((num_classes, num_classes), dtype=np.int64), calibration=empty_sums())
    start = time.perf_counter()
    model.eval()
    for batch in batches:
        images, labels, skipped = split_batch(batch, device)
        totals.skipped += skipped
        if not len(labels):
            continue
        with autocast(device):
            logits = model(to_model_input(images, preprocessing)).float()
        totals.loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        predictions = logits.argmax(1)
        totals.num_correct += int((predictions == labels).sum())
        totals.num_images += len(labels)
        totals.confusion += confusion_matrix(labels.cpu().numpy(), predictions.cpu().numpy(), num_classes)
        totals.calibration += calibration_sums(logits, labels)
    totals.seconds = time.perf_counter() - start
    return totals
