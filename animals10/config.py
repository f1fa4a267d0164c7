"""Training configuration: every default in one place, and the named recipes.

`--recipe study` reproduces the original study's settings; `--recipe best` (the default) is the
stronger recipe. A recipe may set values for one model only (`model_settings`); values given on the
command line override both. The configuration resolved for each model is saved inside its artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from animals10.models import get_model_spec, list_models
from animals10.transforms import Augmentation

DEFAULT_MODELS = ("custom_cnn", "mobilenet_v2")


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
    optimizer: str = "adam"  # adam | adamw (decoupled weight decay)
    weight_decay: float = 0.0
    schedule: str = "plateau"  # plateau: reduce on validation-loss plateaus | cosine: warm-up, then cosine decay per phase
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    class_weighting: bool = False  # weight the loss by inverse class frequency (imbalanced data)
    model_kwargs: dict = field(default_factory=dict)  # passed to the model's constructor, e.g. {"residual": True}
    image_size: int = 128
    val_fraction: float = 0.2
    seed: int = 42
    early_stopping_patience: int = 5  # epochs without a better validation loss; 0: never stop early
    plateau_patience: int = 2  # epochs before the learning rate is reduced
    plateau_factor: float = 0.5
    augmentation: Augmentation = field(default_factory=Augmentation)
    num_workers: int = 1
    cpus_per_worker: int = 1
    use_gpu: bool | None = None  # None: use GPUs when the cluster has them
    pretrained: bool = True
    weights: str | None = None  # a file with the backbone's ImageNet weights
    max_failures: int = 0  # worker or node failures to recover from, from the latest checkpoint
    mixed_precision: bool = True  # bfloat16 autocast on GPUs; no effect on CPUs
    s3_endpoint: str | None = None
    # Per model name, the recipe's values that differ for that model, e.g. {"custom_cnn": {"epochs": 120}}.
    model_settings: dict = field(default_factory=dict)
    explicit: tuple[str, ...] = ()  # names of the values given on the command line: they win over model_settings

    def with_overrides(self, **overrides) -> "TrainConfig":
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given, explicit=tuple(sorted({*self.explicit, *given})))

    def with_augmentation(self, **changes) -> "TrainConfig":
        """This configuration with some augmentation values (not None) changed, as given on the command line."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return self.with_overrides(augmentation=replace(self.augmentation, **changes)) if changes else self

    def for_model(self, model_name: str) -> "TrainConfig":
        """The values that apply to one model: the recipe's for that model on top, the command line's on top
        of those, and the model's default number of epochs where none is set."""
        spec = get_model_spec(model_name)
        settings = {k: v for k, v in self.model_settings.get(model_name, {}).items() if k not in self.explicit}
        resolved = replace(self, **settings)
        return resolved if resolved.epochs is not None else replace(resolved, epochs=spec.default_epochs)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["models"] = list(self.models)
        values["explicit"] = list(self.explicit)
        return values


TRANSFER_MODELS = tuple(name for name in list_models() if get_model_spec(name).transfer)

# The study's augmentation with random resized crops and colour jitter on top.
STRONG_AUGMENTATION = Augmentation(
    horizontal_flip=True, rotation_degrees=15.0, brightness=(0.7, 1.3), crop_scale=(0.35, 1.0), contrast=(0.7, 1.3), saturation=(0.6, 1.4)
)

RECIPES: dict[str, dict] = {
    # The study: Adam at 0.001, reduce-LR-on-plateau, early stopping, flips/rotations/brightness,
    # 128 px; transfer models train the head, then the top 30% of the backbone at a tenth of the rate.
    "study": {},
    # Stronger: random resized crops and colour jitter, label smoothing, AdamW with weight decay, warm-up
    # then cosine decay, the loss weighted against class imbalance. Transfer models at 224 px, the head
    # first, then the whole network at a low rate. The from-scratch CNN at 64 px, many short steps.
    "best": {
        "optimizer": "adamw",
        "lr": 2e-3,
        "fine_tune_lr": 2e-4,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "class_weighting": True,
        "head_epochs_fraction": 0.2,
        "unfreeze_fraction": 1.0,
        "early_stopping_patience": 10,
        "augmentation": STRONG_AUGMENTATION,
        "model_settings": {
            **{name: {"image_size": 224} for name in TRANSFER_MODELS},
            "custom_cnn": {"image_size": 64, "epochs": 120, "batch_size": 16, "lr": 1e-3, "early_stopping_patience": 0},
        },
    },
}


def recipe_config(recipe: str, **values) -> TrainConfig:
    """The named recipe's configuration, with `values` (not None) on top."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe '{recipe}'; choose one of: {', '.join(RECIPES)}.")
    return TrainConfig(recipe=recipe, **RECIPES[recipe]).with_overrides(**values)
