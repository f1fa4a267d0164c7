"""The device and precision context, chosen at run time: the same code runs on a CPU and on GPUs."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def get_device() -> torch.device:
    """The best local accelerator, or the CPU. (Inside Ray Train use ray.train.torch.get_device().)"""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def on_gpu(device: torch.device) -> bool:
    """Whether GPU-only speed-ups apply: mixed precision, channels_last, pinned memory."""
    return device.type == "cuda"


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on GPUs (bfloat16: no loss scaling needed); full precision on the CPU."""
    if enabled and on_gpu(device):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
