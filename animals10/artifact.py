"""The model artifact: one directory (local or s3://) that everything loads models from.

<artifact>/model.safetensors   weights (loading executes no pickled code)
<artifact>/model_card.json     architecture, class names in order, preprocessing, training
                               configuration, metrics, library versions, id
<artifact>/history.json|csv    per-epoch metrics (written by training)
<artifact>/open_world.safetensors   the open-world statistics (written by training; see open_world.py)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass

import torch
from torch import nn

from animals10 import storage
from animals10.card import CARD_FILE, ModelCard, read_card
from animals10.errors import ArtifactError, StorageError
from animals10.models import create_model, unwrap

WEIGHTS_FILE = "model.safetensors"


@dataclass
class LoadedModel:
    """A model in eval mode on its device, with its card."""

    model: nn.Module
    card: ModelCard
    device: torch.device


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for package in ("animals10", "torch", "torchvision", "timm", "ray"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return versions


def save_artifact(model: nn.Module, card: ModelCard, uri: str, extra_files: dict[str, bytes] | None = None) -> str:
    """Writes weights and card (and extra files) to `uri`; returns the artifact id."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    weights = save(state, metadata={"architecture": card.architecture})
    card.id = card.id or f"{card.architecture}-{hashlib.sha256(weights).hexdigest()[:12]}"
    card.versions = card.versions or library_versions()
    card.created_at = card.created_at or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    # The card last: a reader that finds it finds complete weights.
    for name, data in (extra_files or {}).items():
        storage.write_bytes(storage.join(uri, name), data)
    storage.write_bytes(storage.join(uri, WEIGHTS_FILE), weights)
    write_card(card, uri)
    return card.id


def write_card(card: ModelCard, uri: str) -> None:
    """Writes (or rewrites, once more is known about the model) the artifact's card."""
    storage.write_bytes(storage.join(uri, CARD_FILE), json.dumps(card.to_dict(), indent=2).encode())


def load_model(uri: str, device: torch.device | str | None = None) -> LoadedModel:
    """The one loader: reads the card and weights, builds the model, returns it in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from animals10.device import get_device

    card = read_card(uri)
    device = torch.device(device) if device is not None else get_device()
    try:
        state = load(storage.read_bytes(storage.join(uri, WEIGHTS_FILE)))
    except (FileNotFoundError, StorageError) as error:
        raise ArtifactError(f"'{uri}' has a model card but no {WEIGHTS_FILE}.") from error
    except SafetensorError as error:
        raise ArtifactError(f"The weights in '{uri}' are damaged ({error}).") from error
    try:
        model = create_model(card.architecture, len(card.class_names), pretrained=False, **card.model_kwargs)
    except ValueError as error:  # an architecture this installation does not know
        raise ArtifactError(f"The model in '{uri}' cannot be built: {error}") from error
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"The weights in '{uri}' do not fit a {card.architecture} model ({error}).") from error
    return LoadedModel(model.to(device).eval(), card, device)
