"""The device and precision context, chosen at run time: the same code runs on a CPU and on GPUs."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def get_device() -> torch.device:
    """The best local accelerator, or the CPU. (Inside Ray Train use ray.train.torch.get_device().)"""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on GPUs (bfloat16: no loss scaling needed); full precision on the CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
