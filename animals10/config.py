"""Training configuration: every default in one place, and the named recipes.

`--recipe study` reproduces the original study's settings; `--recipe best` (the default) is the
stronger recipe. The command line overrides a recipe's values, and the resolved configuration is
saved with each run and inside each model artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from animals10.models import get_model_spec
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
    model_kwargs: dict = field(default_factory=dict)  # per model name, e.g. {"custom_cnn": {"residual": True}}
    image_size: int = 128
    transfer_image_size: int | None = None  # input size of pretrained models, when it differs
    val_fraction: float = 0.2
    seed: int = 42
    early_stopping_patience: int = 5  # epochs without a better validation loss
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

    def epochs_for(self, model_name: str) -> int:
        return self.epochs if self.epochs is not None else get_model_spec(model_name).default_epochs

    def image_size_for(self, model_name: str) -> int:
        if self.transfer_image_size and get_model_spec(model_name).transfer:
            return self.transfer_image_size
        return self.image_size

    def with_overrides(self, **overrides) -> "TrainConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        values = asdict(self)
        values["models"] = list(self.models)
        return values


RECIPES: dict[str, dict] = {
    # The study: Adam at 0.001, reduce-LR-on-plateau, early stopping, flips/rotations/brightness,
    # 128 px; transfer models train the head, then the top 30% of the backbone at a tenth of the rate.
    "study": {},
    # Stronger: a residual from-scratch CNN; random resized crops and colour jitter; label smoothing;
    # AdamW with weight decay; warm-up then cosine decay; the loss weighted against class imbalance;
    # transfer models at 224 px, the head first, then the whole network at a low rate.
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
        "transfer_image_size": 224,
        "model_kwargs": {"custom_cnn": {"residual": True}},
        "augmentation": Augmentation(
            horizontal_flip=True,
            rotation_degrees=15.0,
            brightness=(0.7, 1.3),
            crop_scale=(0.35, 1.0),
            contrast=(0.7, 1.3),
            saturation=(0.6, 1.4),
        ),
    },
}


def recipe_config(recipe: str, **values) -> TrainConfig:
    """The named recipe's configuration, with `values` (not None) on top."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe '{recipe}'; choose one of: {', '.join(RECIPES)}.")
    return TrainConfig(recipe=recipe, **RECIPES[recipe]).with_overrides(**values)
