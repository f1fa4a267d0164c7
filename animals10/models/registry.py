"""Models by name: a registry, as timm's `register_model` / `create_model`, and helpers every model uses.

Models return logits; softmax is applied by whoever turns them into probabilities. Every model also
has `embed(x)` (its penultimate features, the embedding) and `classify(embedding)` (the logits), with
`forward(x) == classify(embed(x))`: the open-world scores and `--embeddings` read the embedding. Importing this
package registers the three architectures: `custom_cnn` (custom_cnn.py), `mobilenet_v2` and
`efficientnet_lite0` (transfer.py), and the family `timm:<name>` (timm_zoo.py): a name with a
registered prefix is resolved by that family when it is first asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from animals10.errors import WeightsUnavailableError


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model needs besides its weights: its preprocessing and how it trains."""

    name: str
    build: Callable[..., nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_epochs: int
    transfer: bool  # pretrained backbone trained in two phases: head only, then top blocks
    # The recipe's values for a family apply to each of its models: scratch | batchnorm | layernorm.
    family: str = "scratch"
    input_size: int | None = None  # the size its pretrained weights were made for; None: the recipe's
    fixed_input_size: bool = False  # it takes no other size (e.g. a ViT's position embeddings)
    interpolation: str = "bilinear"
    crop_fraction: float | None = None  # see card.Preprocessing


_REGISTRY: dict[str, ModelSpec] = {}
_FAMILIES: dict[str, Callable[[str], ModelSpec]] = {}  # name prefix -> resolver of names with it


def register_model(name: str, *, mean, std, default_epochs: int, transfer: bool, family: str = "scratch"):
    def decorator(build):
        _REGISTRY[name] = ModelSpec(name, build, tuple(mean), tuple(std), default_epochs, transfer, family)
        return build

    return decorator


def register_family(prefix: str, resolve: Callable[[str], ModelSpec]) -> None:
    """Names `<prefix><anything>` are resolved by `resolve(name)`, which raises ValueError for a bad name."""
    _FAMILIES[prefix] = resolve


def list_models() -> list[str]:
    """The registered names (a family's models are not listed: `model_choices` names the family)."""
    return sorted(_REGISTRY)


def model_choices() -> str:
    """What a user may pass as a model name, for messages and help texts."""
    return ", ".join([*list_models(), *(f"{prefix}<name>" for prefix in sorted(_FAMILIES))])


def get_model_spec(name: str) -> ModelSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    for prefix, resolve in _FAMILIES.items():
        if name.startswith(prefix):
            return resolve(name)
    raise ValueError(f"Unknown model '{name}'; choose one of: {model_choices()}.")


def folder_name(name: str) -> str:
    """A model name as a file or folder name: `timm:resnet50` -> `timm-resnet50`."""
    return name.replace(":", "-")


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
