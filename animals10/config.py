"""Training configuration: every default in one place. The command line overrides these, and the
resolved configuration is saved with each run and inside each model artifact."""

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
    epochs: int | None = None  # None: the model's default (30 from scratch, 20 transfer)
    batch_size: int = 32  # global: split evenly over the workers
    lr: float = 1e-3  # Adam
    fine_tune_lr: float = 1e-4  # transfer models, once the top of the backbone is unfrozen
    head_epochs_fraction: float = 0.5  # transfer models: share of epochs that train the head only
    unfreeze_fraction: float = 0.3  # transfer models: top share of backbone stages fine-tuned
    label_smoothing: float = 0.0
    weight_decay: float = 0.0
    image_size: int = 128
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

    def with_overrides(self, **overrides) -> "TrainConfig":
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        values = asdict(self)
        values["models"] = list(self.models)
        return values
