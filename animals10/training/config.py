"""Training configuration: every default in one place, the named recipes, and how they combine.

Precedence, lowest to highest; `TrainConfig.for_model` resolves one model's values:
  1. `TrainConfig`'s defaults (the original study's settings);
  2. the recipe (`RECIPES[name]`: `study` adds nothing, `best` is the stronger recipe);
  3. the recipe's values for a family of models (`model_settings["family:<family>"]`, e.g. layer-norm
     models fine-tuned at a lower rate), then those for one model (`model_settings[name]`, e.g.
     custom_cnn at 64 px);
  4. the command line: a value given there (`with_overrides`, recorded in `explicit`) wins over 2 and 3
     for every model; an input size given there is also the test size, unless that is given too;
     augmentation values given there (`with_augmentation`) change every model's augmentation, also one
     whose recipe sets its own; values for one model given there (`with_model_settings`, e.g.
     `--scattering` for custom_cnn) go on top of the recipe's values for that model;
  5. a model's default number of epochs, and the input size its pretrained weights were made for
     (timm's models), where nothing above sets them.
The configuration resolved for each model travels whole to its training workers and is saved in its artifact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from animals10.card import Preprocessing
from animals10.models import get_model_spec, list_models
from animals10.transforms import Augmentation

DEFAULT_MODELS = ("custom_cnn", "mobilenet_v2")
KEEP_CHOICES = ("best_val_loss", "last")


@dataclass(frozen=True)
class TrainConfig:
    """One training run of one or more models. Defaults follow the original study."""

    data: str = ""
    output: str = "runs/exp"
    models: tuple[str, ...] = DEFAULT_MODELS
    recipe: str = "study"
    epochs: int | None = None  # None: the model's default (30 from scratch, 20 transfer)
    batch_size: int = 32  # global: split evenly over the workers
    lr: float = 1e-3  # Adam
    fine_tune_lr: float = 1e-4  # transfer models, once the top of the backbone is unfrozen
    head_epochs_fraction: float = 0.5  # transfer models: share of epochs that train the head only
    unfreeze_fraction: float = 0.3  # transfer models: top share of backbone stages fine-tuned
    freeze_batchnorm: bool = False  # transfer models: every BatchNorm keeps its ImageNet statistics while fine-tuning
    imagenet_head: bool = (
        False  # transfer models: the head starts from the backbone's ImageNet classifier (models.IMAGENET_CLASSES)
    )
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    weight_decay: float = 0.0
    schedule: str = (
        "plateau"  # plateau: reduce on validation-loss plateaus | cosine: warm-up, then cosine decay per phase
    )
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    class_weighting: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    model_kwargs: dict = field(default_factory=dict)  # passed to the model's constructor, e.g. {"scattering": 8}
    image_size: int = 128
    augment_size: int | None = (
        None  # training photos decoded and augmented at this size, then resized to image_size: sharper crops
    )
    test_size: int | None = (
        None  # input size of validation and inference (None: image_size); a little larger offsets random crops' zoom
    )
    val_fraction: float = 0.2
    seed: int = 42
    early_stopping_patience: int = 5  # epochs without a better validation loss; 0: never stop early
    keep: str = "best_val_loss"  # the epoch the artifact keeps: best_val_loss | last (for schedules that decay to zero)
    plateau_patience: int = 2  # epochs before the learning rate is reduced
    plateau_factor: float = 0.5
    augmentation: Augmentation = field(default_factory=Augmentation)
    # Each photo of a training batch in this many differently augmented copies, in one step (batch
    # augmentation, Hoffer et al. 2020).
    copies: int = 1
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    pretrained: bool = True
    weights: str | None = None  # a file with the backbone's ImageNet weights
    max_failures: int = 0  # worker or node failures to recover from, from the latest checkpoint
    # Decode the photos once and keep them in Ray's object store for every epoch; None: when they
    # take at most a quarter of it. Else each epoch decodes them again as it streams them.
    cache_decoded: bool | None = None
    s3_endpoint: str | None = None
    # Per model name, the recipe's values that differ for that model, e.g. {"custom_cnn": {"epochs": 120}}.
    model_settings: dict = field(default_factory=dict)
    explicit: tuple[str, ...] = ()  # names of the values given on the command line: they win over model_settings
    augmentation_changes: dict = field(
        default_factory=dict
    )  # augmentation values given on the command line: on top of every model's augmentation

    def __post_init__(self):
        if self.keep not in KEEP_CHOICES:
            raise ValueError(f"Unknown keep '{self.keep}'; choose one of: {', '.join(KEEP_CHOICES)}.")
        if not 0 < self.val_fraction < 1:
            raise ValueError(
                "val_fraction must be above 0 and below 1 (validation needs photos, and so does training), not "
                f"{self.val_fraction}."
            )
        if self.copies < 1:
            raise ValueError(f"copies must be at least 1 (each photo once), not {self.copies}.")
        for name, size in (("augment_size", self.augment_size), ("test_size", self.test_size)):
            if size is not None and size < 1:
                raise ValueError(f"{name} must be a positive number of pixels, not {size}.")

    @property
    def train_decode_size(self) -> int:
        """The size training photos are decoded and augmented at: never below the model's input size."""
        return max(self.image_size, self.augment_size or 0)

    @property
    def inference_size(self) -> int:
        """The input size of validation and inference, which the artifact records."""
        return self.test_size or self.image_size

    def preprocessing(self, model_name: str) -> Preprocessing:
        """What validation and inference feed the model (the artifact records it); training runs at image_size."""
        spec = get_model_spec(model_name)
        return Preprocessing(self.inference_size, spec.mean, spec.std, spec.interpolation, spec.crop_fraction)

    def with_overrides(self, **overrides) -> TrainConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given, explicit=tuple(sorted({*self.explicit, *given})))

    def with_augmentation(self, **changes) -> TrainConfig:
        """This configuration with some augmentation values (not None) changed, as given on the command line:
        they apply to every model, also to one whose recipe sets its own augmentation."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        changes = {**self.augmentation_changes, **changes}
        return replace(self, augmentation=replace(self.augmentation, **changes), augmentation_changes=changes)

    def with_model_settings(self, model_name: str, **values) -> TrainConfig:
        """This configuration with values (not None) for one model only, as given on the command line:
        on top of the recipe's values for that model."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        return replace(
            self,
            model_settings={**self.model_settings, model_name: {**self.model_settings.get(model_name, {}), **values}},
        )

    def for_model(self, model_name: str) -> TrainConfig:
        """The values that apply to one model, in the precedence the module's docstring lays down."""
        spec = get_model_spec(model_name)
        overridden = {*self.explicit, *(("test_size",) if "image_size" in self.explicit else ())}
        settings = {**self.model_settings.get(f"family:{spec.family}", {}), **self.model_settings.get(model_name, {})}
        settings = {k: v for k, v in settings.items() if k not in overridden}
        resolved = replace(self, **settings)
        if self.augmentation_changes:
            resolved = replace(resolved, augmentation=replace(resolved.augmentation, **self.augmentation_changes))
        if spec.input_size and "image_size" not in overridden and "image_size" not in settings:
            resolved = replace(resolved, image_size=spec.input_size)
        return resolved if resolved.epochs is not None else replace(resolved, epochs=spec.default_epochs)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["models"] = list(self.models)
        values["explicit"] = list(self.explicit)
        return values


TRANSFER_MODELS = tuple(name for name in list_models() if get_model_spec(name).transfer)

# The study's augmentation with random resized crops and colour jitter on top.
STRONG_AUGMENTATION = Augmentation(
    horizontal_flip=True,
    rotation_degrees=15.0,
    brightness=(0.7, 1.3),
    crop_scale=(0.35, 1.0),
    contrast=(0.7, 1.3),
    saturation=(0.6, 1.4),
)

RECIPES: dict[str, dict] = {
    # The study: Adam at 0.001, reduce-LR-on-plateau, early stopping, flips/rotations/brightness,
    # 128 px; transfer models train the head, then the top 30% of the backbone at a tenth of the rate.
    "study": {},
    # Stronger: random resized crops and colour jitter, label smoothing, AdamW with weight decay, warm-up
    # then cosine decay to the last epoch, which the artifact keeps; the loss weighted against class
    # imbalance. Transfer models at 224 px: the head first (30% of the epochs), started from the backbone's
    # ImageNet classifier, then the whole network at a low rate with BatchNorm's ImageNet statistics kept;
    # timm's models at the size of their weights, layer-norm ones (ViT, ConvNeXt, Swin) fine-tuned at a
    # lower rate, as their authors fine-tune them.
    # The from-scratch CNN at 64 px, many short steps, its random crops cut from photos decoded at 128 px,
    # tested at 72 px against the zoom of random crops; each photo of a batch in four augmented copies; its
    # first block fixed wavelets at eight orientations (a scattering transform) instead of a learned one.
    "best": {
        "optimizer": "adamw",
        "lr": 5e-3,
        "fine_tune_lr": 1e-4,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "class_weighting": True,
        "head_epochs_fraction": 0.3,
        "unfreeze_fraction": 1.0,
        "freeze_batchnorm": True,
        "imagenet_head": True,
        "early_stopping_patience": 0,
        "keep": "last",
        "augmentation": STRONG_AUGMENTATION,
        "model_settings": {
            **{name: {"image_size": 224} for name in TRANSFER_MODELS},
            "family:layernorm": {"fine_tune_lr": 3e-5},
            "custom_cnn": {
                "image_size": 64,
                "augment_size": 128,
                "test_size": 72,
                "epochs": 120,
                "batch_size": 16,
                "lr": 1e-3,
                "copies": 4,
                "model_kwargs": {"scattering": 8},
            },
        },
    },
}


def recipe_config(recipe: str, **values) -> TrainConfig:
    """The named recipe's configuration, with `values` (not None) on top."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe '{recipe}'; choose one of: {', '.join(RECIPES)}.")
    return TrainConfig(recipe=recipe, **RECIPES[recipe]).with_overrides(**values)
