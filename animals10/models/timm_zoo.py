"""Any timm architecture as `timm:<name>` (`timm:convnext_tiny`, `timm:resnet50`, `timm:vit_small_patch16_224`),
trained with the transfer recipe like the registered backbones.

Its preprocessing (input size, mean, std, interpolation, centre crop) comes from timm's `pretrained_cfg`
for that name, is stored in the artifact and followed by every consumer. Its ImageNet weights come from
timm's usual source (the Hugging Face Hub, or its cache) or from a file (`--weights`); rebuilding a
trained model from its artifact needs neither.
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
import os
import socket
import urllib.parse
from collections.abc import Sequence

import torch
from torch import nn

from animals10.card import INTERPOLATIONS
from animals10.errors import WeightsUnavailableError
from animals10.models.registry import ModelSpec, load_state_dict_file, register_family
from animals10.models.transfer import Backbone, transfer_model

logger = logging.getLogger(__name__)

PREFIX = "timm:"
IMAGENET_1K = 1000
REACH_TIMEOUT_S = 5.0


@functools.cache
def timm_spec(model_name: str) -> ModelSpec:
    """The spec of `timm:<name>`, from timm's registry and `pretrained_cfg` (no network, no weights)."""
    import timm
    from timm.models import get_pretrained_cfg

    name = model_name[len(PREFIX) :]
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=4, cutoff=0.6)
        hint = f"did you mean {' or '.join(PREFIX + c for c in close)}?" if close else "timm.list_models() lists them."
        raise ValueError(f"timm has no model '{name}'; {hint}")
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"timm's '{name}' has no pretrained configuration, so no ImageNet weights to start from.")
    _, height, width = cfg.input_size
    if height != width:
        raise ValueError(f"timm's '{name}' takes {width}x{height} photos; only square inputs are supported.")
    return ModelSpec(
        model_name,
        functools.partial(build_timm_model, name),
        tuple(cfg.mean),
        tuple(cfg.std),
        default_epochs=20,
        transfer=True,
        family="batchnorm" if _has_batchnorm(name) else "layernorm",
        input_size=height,
        fixed_input_size=bool(cfg.fixed_input_size),
        interpolation=cfg.interpolation if cfg.interpolation in INTERPOLATIONS else "bicubic",
        crop_fraction=float(cfg.crop_pct) if cfg.crop_pct else None,
    )


def _has_batchnorm(name: str) -> bool:
    """Whether the architecture has BatchNorm layers, read off a copy built on the meta device (no memory)."""
    import timm

    try:
        with torch.device("meta"):
            probe = timm.create_model(name)
    except Exception:  # noqa: BLE001 - a model whose constructor computes on its tensors: build it for real
        probe = timm.create_model(name)
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules())


def build_timm_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    weights_path: str | None = None,
    dropout: float = 0.2,
    head_classes: Sequence[str] | None = None,
) -> nn.Module:
    """timm's `name` cut before its classifier, with a new head; `pretrained`: its ImageNet weights
    (`weights_path`, else timm's source). `head_classes` (with `pretrained`): the head starts from
    its ImageNet-1k classifier, where it has one."""
    import timm
    from timm.models import group_parameters

    if pretrained and weights_path is None:
        base, has_imagenet_head = _create_from_timm_source(name), True
    else:
        base = timm.create_model(name, pretrained=False)
        has_imagenet_head = pretrained and load_weights(base, name, weights_path)
    classifier = base.get_classifier()
    usable = (
        has_imagenet_head and isinstance(classifier, nn.Linear) and classifier.out_features == IMAGENET_1K
    )  # fmt: skip
    imagenet_classifier = copy.deepcopy(classifier) if usable else None
    base.reset_classifier(0)  # forward() now returns the pooled (pre-logits) features
    groups = group_parameters(base, base.group_matcher(coarse=True))
    stages = [list(names) for _, names in sorted(groups.items())]
    num_features = getattr(base, "head_hidden_size", None) or base.num_features
    backbone = Backbone(base, stages, num_features, imagenet_classifier)
    return transfer_model(backbone, num_classes, dropout, head_classes if pretrained else None)


def load_weights(model: nn.Module, name: str, weights_path: str) -> bool:
    """Loads the ImageNet weights in `weights_path` into `model` (timm's `name`, its own classifier still
    on); returns whether its classifier came with them. A file whose classifier is another size (say
    ImageNet-21k's) gives the backbone only; any other layer that does not fit is named in the error."""
    state = load_state_dict_file(weights_path)
    target = model.state_dict()
    classifier = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(state[k].shape)} (the model has {tuple(v.shape)})"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [k.split(" ")[0] for k in missing + unexpected + wrong]
    if problems and all(k.startswith(prefixes) for k in problems):
        state = {k: v for k, v in state.items() if not k.startswith(prefixes)}
        model.load_state_dict(state, strict=False)
        return False
    if problems:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' and more' if len(keys) > 5 else ''}"
            for label, keys in (("missing", missing), ("not in the model", unexpected), ("other shapes", wrong))
            if keys
        ]
        raise WeightsUnavailableError(
            f"The weights in '{weights_path}' do not fit timm's {name} ({len(problems)} layers): {'; '.join(parts)}."
        )
    model.load_state_dict(state)
    return True


def _create_from_timm_source(name: str) -> nn.Module:
    """timm's `name` with its pretrained weights: from Hugging Face's cache, else fetched by timm. Offline
    (no route to the source, or HF_HUB_OFFLINE) it fails at once, not after a minute of retries."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    cached = try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors") if cfg.hf_hub_id else None
    if isinstance(cached, str):
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": cached})
    source = constants.ENDPOINT if cfg.hf_hub_id else cfg.url
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else _unreachable(source)
    if not why:
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as error:  # noqa: BLE001 - any failure means: no weights here
            why = f"{type(error).__name__}: {error}"
    raise WeightsUnavailableError(
        f"timm could not fetch the ImageNet weights of {name} ({why}); they come from {source} or Hugging Face's "
        "cache. Pass --weights FILE (that model's model.safetensors, or a weights-only torch file) where there is "
        "no network."
    )


def _unreachable(url: str | None) -> str:
    """Why `url`'s host cannot be reached ("" when it can, or when a proxy decides)."""
    if not url:
        return "timm knows no source for them"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return ""
    host = urllib.parse.urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        return f"{host} cannot be reached: {error.strerror or error}"
    return ""


register_family(PREFIX, timm_spec)
