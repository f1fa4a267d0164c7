"""The model card: what a model expects and where it came from. No torch here, so that a driver can
read a model's classes and input size without loading the framework.

    <artifact>/model_card.json     architecture, class names in order, preprocessing, training
                                   configuration, metrics, library versions, id
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from animals10 import storage
from animals10.errors import ArtifactError, SettingsError, StorageError

CARD_FILE = "model_card.json"
FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
UNIT_MEAN = (0.0, 0.0, 0.0)  # pixels stay in [0, 1], as the study's Rescaling(1/255)
UNIT_STD = (1.0, 1.0, 1.0)


INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects: square input size in pixels, how a photo becomes that square, and the
    per-channel normalisation of [0, 1] pixels.

    `crop_fraction` None: the whole photo squashed to the square (the study's Keras loader). A number
    (timm's `crop_pct`): the shorter side scaled to floor(image_size / crop_fraction), then the centre
    square cut out, as timm's evaluation transform does. `interpolation` is the resampling filter."""

    image_size: int = 128
    mean: tuple[float, float, float] = UNIT_MEAN
    std: tuple[float, float, float] = UNIT_STD
    interpolation: str = "bilinear"
    crop_fraction: float | None = None

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            choices = ", ".join(INTERPOLATIONS)
            raise ValueError(f"Unknown interpolation '{self.interpolation}'; choose one of: {choices}.")
        if self.crop_fraction is not None and not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be above 0 and at most 1, not {self.crop_fraction}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        """Also reads cards written before `interpolation` and `crop_fraction` existed (bilinear, squashed)."""
        crop = values.get("crop_fraction")
        return cls(
            int(values["image_size"]),
            tuple(values["mean"]),
            tuple(values["std"]),
            values.get("interpolation", "bilinear"),
            None if crop is None else float(crop),
        )


@dataclass
class ModelCard:
    """Everything needed to use a model besides its weights."""

    architecture: str
    class_names: list[str]
    preprocessing: Preprocessing
    model_kwargs: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    # {"temperature": T, ...}: logits are divided by T before the softmax (calibration.py); empty: T = 1
    calibration: dict = field(default_factory=dict)
    # {"score": name, "threshold": t, ...}: photos whose unknown score is above t are "unknown"
    # (open_world.py; the statistics are in open_world.safetensors); empty: no unknown flag
    open_world: dict = field(default_factory=dict)
    id: str = ""
    versions: dict = field(default_factory=dict)
    created_at: str = ""

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "id": self.id,
            "architecture": self.architecture,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "model_kwargs": self.model_kwargs,
            "training": self.training,
            "metrics": self.metrics,
            "data": self.data,
            "calibration": self.calibration,
            "open_world": self.open_world,
            "versions": self.versions,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, values: dict) -> ModelCard:
        try:
            return cls(
                architecture=values["architecture"],
                class_names=list(values["class_names"]),
                preprocessing=Preprocessing.from_dict(values["preprocessing"]),
                model_kwargs=values.get("model_kwargs", {}),
                training=values.get("training", {}),
                metrics=values.get("metrics", {}),
                data=values.get("data", {}),
                calibration=values.get("calibration", {}),
                open_world=values.get("open_world", {}),
                id=values.get("id", ""),
                versions=values.get("versions", {}),
                created_at=values.get("created_at", ""),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ArtifactError(f"The model card is missing or has a bad field ({error}).") from error


def read_card(uri: str) -> ModelCard:
    try:
        raw = storage.read_bytes(storage.join(uri, CARD_FILE))
    except (FileNotFoundError, NotADirectoryError, StorageError) as error:
        raise ArtifactError(f"'{uri}' is not a model artifact: it has no {CARD_FILE}.") from error
    try:
        return ModelCard.from_dict(json.loads(raw))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"The model card in '{uri}' is not valid JSON ({error}).") from error


def check_threshold(card_entry: dict, threshold: float | None, model_uri: str) -> None:
    """A threshold the user gave (None: none) for a card's `open_world` entry: the artifact must have an
    open world, and the number must be in its score's range; else a `SettingsError` saying which. Here,
    not in open_world.py, so that the batch driver checks it without importing torch."""
    if threshold is None:
        return
    if not card_entry:
        raise SettingsError(
            f"{model_uri} has no open-world statistics (an older artifact), so --unknown-threshold cannot apply; "
            "retrain it, or leave the option out."
        )
    score = card_entry["score"]
    upper = 1.0 if score == "max_probability" else math.inf
    if not (math.isfinite(threshold) and 0 <= threshold <= upper):
        bound = "between 0 and 1" if upper == 1 else "a finite number of at least 0"
        raise SettingsError(f"--unknown-threshold {threshold} is outside the {score} score's range: give {bound}.")
