"""`custom_cnn`: the CNN designed from scratch, stacked conv + max-pool blocks and a dense classifier,
with an optional fixed first stage (a scattering transform) for training on few photos."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animals10.card import UNIT_MEAN, UNIT_STD
from animals10.models.registry import load_state_dict_file, register_model


def _gabor(radius: int, sigma: float, theta: float, xi: float, slant: float) -> torch.Tensor:
    """A (2r+1, 2r+1) complex Gabor filter: a Gaussian envelope `sigma` px along `theta` (and `sigma / slant`
    across it) times a wave of `xi` radians a pixel along `theta`, measured from the vertical axis."""
    y, x = torch.meshgrid(torch.arange(-radius, radius + 1.0), torch.arange(-radius, radius + 1.0), indexing="ij")
    along, across = y * math.cos(theta) + x * math.sin(theta), x * math.cos(theta) - y * math.sin(theta)
    envelope = torch.exp(-(along**2 + slant**2 * across**2) / (2 * sigma**2)) / (2 * math.pi * sigma**2 / slant)
    return envelope * torch.exp(1j * xi * along)


class ScatteringStem(nn.Module):
    """A fixed first stage: the scattering transform at one scale (Mallat 2012), the start of Oyallon et al.'s
    (2018) hybrid networks, with kymatio's filters (Andreux et al. 2020). Each colour channel is filtered by
    Morlet wavelets at `orientations` angles (edges about 3 px apart); the moduli of the responses, and the
    channel itself, are blurred by a Gaussian and subsampled by two, then normalised. Nothing here is learned:
    on a few hundred photos, what a first layer would learn comes without fitting them.
    (B, 3, H, W) -> (B, 3 (1 + orientations), H/2, W/2)."""

    RADIUS = 6  # the filters' half-width: their envelopes are below 0.1% of the peak beyond it

    def __init__(self, orientations: int = 8):
        super().__init__()
        thetas = [(orientations // 2 - 1 - k) * math.pi / orientations for k in range(orientations)]
        wavelets = []
        for theta in thetas:  # Morlet: a Gabor filter less its envelope in the share that makes its mean zero
            wave, envelope = (_gabor(self.RADIUS, 0.8, theta, xi, 4 / orientations) for xi in (3 * math.pi / 4, 0.0))
            wavelets.append(wave - wave.sum() / envelope.sum() * envelope)
        wavelets = torch.stack(wavelets)
        self.register_buffer(
            "wavelets", torch.cat([wavelets.real, wavelets.imag]).unsqueeze(1).float(), persistent=False
        )
        self.register_buffer(
            "blur",
            _gabor(self.RADIUS, 0.8, 0.0, 0.0, 1.0).real.float().expand(1 + orientations, 1, -1, -1).clone(),
            persistent=False,
        )
        self.orientations, self.out_channels = orientations, 3 * (1 + orientations)
        self.norm = nn.BatchNorm2d(self.out_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b * c, 1, h, w)  # each colour channel alone
        pad = (self.RADIUS,) * 4
        real, imaginary = F.conv2d(F.pad(x, pad, mode="reflect"), self.wavelets).chunk(2, dim=1)
        moduli = (real.square() + imaginary.square()).sqrt()  # (vector_norm over a pair is 40 times slower on CPUs)
        blurred = F.conv2d(
            F.pad(torch.cat([x, moduli], 1), pad, mode="reflect"), self.blur, stride=2, groups=1 + self.orientations
        )
        return self.norm(blurred.reshape(b, self.out_channels, *blurred.shape[-2:]))


class CustomCNN(nn.Module):
    """Conv-BN-ReLU + max-pool blocks that halve the resolution and double the channels, then a dense head.

    `scattering=N` makes the first block a fixed `ScatteringStem` with N orientations instead (its width,
    `widths[0]`, is then 3 (1 + N)). Global average pooling before the dense layers keeps it independent
    of the input size and small (about 0.5 M parameters at the default widths).
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        hidden: int = 256,
        dropout: float = 0.5,
        scattering: int = 0,
    ):
        super().__init__()
        blocks, channels = [], 3
        if scattering:
            stem = ScatteringStem(scattering)
            blocks, channels, widths = [stem], stem.out_channels, widths[1:]
        for width in widths:
            blocks += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes) logits
        return self.classify(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, hidden): the last hidden layer, which the final linear layer reads."""
        return self.classifier[:3](self.pool(self.features(x)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings -> (B, num_classes) logits (dropout, then the final linear layer)."""
        return self.classifier[3:](features)


@register_model("custom_cnn", mean=UNIT_MEAN, std=UNIT_STD, default_epochs=30, transfer=False)
def custom_cnn(num_classes: int, pretrained: bool = False, weights_path: str | None = None, **kwargs) -> nn.Module:
    model = CustomCNN(num_classes, **kwargs)
    if weights_path:
        model.load_state_dict(load_state_dict_file(weights_path))
    return model
