"""What each Ray Train worker runs: one model's epochs, phase by phase, checkpointed after every epoch.

The worker receives a `WorkerTask`: the configuration resolved for its model, whole, and what the driver
learned from the data. It resumes from the latest checkpoint when there is one, so a run that lost a
worker or a node (`max_failures`) continues from its last epoch.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from animals10.calibration import calibration_metrics
from animals10.metrics import classification_metrics
from animals10.models import create_model, get_model_spec, unwrap
from animals10.training.config import TrainConfig
from animals10.training.engine import EpochTotals, train_one_epoch, validate

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"


@dataclass(frozen=True)
class WorkerTask:
    """Everything a worker needs; Ray Train hands it over as `train_loop_config["task"]`."""

    config: TrainConfig  # resolved for this model: TrainConfig.for_model
    model_name: str
    class_names: list[str]
    class_weights: list[float] | None  # per class, for the loss; None: unweighted
    initial_state: object  # ObjectRef of the state dict the driver built once (ImageNet backbone or random init)


@dataclass
class TrainingState:
    """What a checkpoint keeps besides the weights, optimizer and schedule."""

    epoch: int = 0  # epochs done
    history: list[dict] = field(default_factory=list)  # one row of metrics per epoch
    best_val_loss: float = math.inf  # in the current phase, for early stopping
    stale_epochs: int = 0
    stopped_early: bool = False
    skipped: list[str] = field(default_factory=list)  # files that could not be decoded
    resumed_after: list[int] = field(default_factory=list)  # the epochs restarts continued from


# --- across workers --------------------------------------------------------------------------------


def _distributed():
    """torch.distributed when more than one worker takes part, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


def _all_reduce(values: list[float]) -> list[float]:
    """Sums across workers (a no-op for one worker)."""
    dist = _distributed()
    if dist is None:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _all_gather_paths(paths: list[str]) -> list[str]:
    dist = _distributed()
    if dist is None:
        return sorted(paths)
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, paths)
    return sorted(p for part in gathered for p in part)


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Gives every worker rank 0's BatchNorm statistics. DDP broadcasts them before each training
    forward pass, but that pass then updates each worker's own copy: without this, workers would
    validate slightly different models, and not the one the checkpoint saves."""
    dist = _distributed()
    if dist is not None:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def _epoch_metrics(train: EpochTotals, val: EpochTotals, class_names: list[str], world_size: int) -> dict:
    """Workers' sums -> the epoch's metrics (identical on every worker)."""
    num_classes = len(class_names)
    sums = [train.loss_sum, train.num_correct, train.num_images, val.loss_sum, val.num_images]
    summed = _all_reduce([*sums, *val.confusion.ravel().tolist(), *val.calibration.ravel().tolist()])
    train_loss, train_correct, train_images, val_loss, val_images = summed[:5]
    end = 5 + num_classes * num_classes
    confusion = np.asarray(summed[5:end], dtype=np.int64).reshape(num_classes, num_classes)
    calibration = calibration_metrics(np.asarray(summed[end:]).reshape(val.calibration.shape))
    scores = classification_metrics(confusion, class_names)
    seconds = max(_all_reduce([train.seconds])[0] / max(1, world_size), 1e-9)
    return {
        "train_loss": train_loss / max(train_images, 1),
        "train_accuracy": train_correct / max(train_images, 1),
        "val_loss": val_loss / max(val_images, 1),
        "val_accuracy": scores["accuracy"],
        "val_macro_precision": scores["macro_precision"],
        "val_macro_recall": scores["macro_recall"],
        "val_temperature": calibration["temperature"],  # fitted on this epoch's validation logits
        "val_loss_calibrated": calibration["nll_calibrated"],
        "val_ece": calibration["ece"],
        "val_ece_calibrated": calibration["ece_calibrated"],
        "images_per_second": train_images / seconds,
        "num_train_images": int(train_images),
        "num_val_images": int(val_images),
    }


# --- phases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    """From-scratch models train in one phase ("train"); transfer models train the head alone ("head"),
    then the top of the backbone with it ("fine_tune")."""

    epochs: int
    head_epochs: int  # 0: one phase

    @classmethod
    def of(cls, config: TrainConfig, model_name: str) -> Phases:
        transfer = get_model_spec(model_name).transfer
        return cls(config.epochs, max(1, round(config.epochs * config.head_epochs_fraction)) if transfer else 0)

    def at(self, epoch: int) -> str:
        """The phase of the 0-based `epoch`."""
        if not self.head_epochs:
            return "train"
        return "head" if epoch < self.head_epochs else "fine_tune"

    def length(self, phase: str) -> int:
        return {"train": self.epochs, "head": self.head_epochs, "fine_tune": self.epochs - self.head_epochs}[phase]


def _learning_rate_schedule(optimizer, config: TrainConfig, phase_epochs: int):
    """Warm-up then cosine decay over the phase (stepped per epoch), or reduce-on-plateau."""
    if config.schedule != "cosine":
        return ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    warmup = min(config.warmup_epochs, max(phase_epochs - 1, 0))

    def factor(epoch: int) -> float:  # epochs since the phase began -> share of the base rate
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(phase_epochs - warmup, 1)))

    return LambdaLR(optimizer, factor)


def _configure_phase(model: torch.nn.Module, phase: str, phase_epochs: int, config: TrainConfig):
    """Freezes or unfreezes the backbone for `phase`, then wraps (DDP) and builds optimizer and schedule.

    DDP registers only trainable parameters, so the model is wrapped anew when a phase starts."""
    import ray.train.torch

    plain = unwrap(model)
    if phase in ("head", "fine_tune"):
        plain.freeze_backbone()
    if phase == "fine_tune":
        plain.unfreeze_top(config.unfreeze_fraction)
        if config.freeze_batchnorm:
            plain.freeze_batchnorm()
    lr = config.fine_tune_lr if phase == "fine_tune" else config.lr
    params = [p for p in plain.parameters() if p.requires_grad]
    optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(params, lr=lr, weight_decay=config.weight_decay)
    return ray.train.torch.prepare_model(plain), optimizer, _learning_rate_schedule(optimizer, config, phase_epochs)


# --- checkpoints -----------------------------------------------------------------------------------


def read_checkpoint(checkpoint) -> dict:
    """A checkpoint's saved state (weights as tensors only: nothing pickled is executed)."""
    with checkpoint.as_directory() as checkpoint_dir:
        return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def _report(metrics: dict, state: TrainingState, phase: str, model, optimizer, scheduler, rank: int) -> None:
    """Reports the epoch to Ray Train with a checkpoint from rank 0, complete on local disk before
    it is reported; Ray then persists it."""
    import ray.train

    with tempfile.TemporaryDirectory() as checkpoint_dir:
        checkpoint = None
        if rank == 0:
            saved = {
                **vars(state),
                "phase": phase,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            torch.save(saved, Path(checkpoint_dir) / STATE_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
        ray.train.report(metrics, checkpoint=checkpoint)


# --- the loop --------------------------------------------------------------------------------------


def train_loop_per_worker(train_loop_config: dict) -> None:
    """Ray Train's per-worker function: resumes from the latest checkpoint when there is one."""
    import ray
    import ray.train
    import ray.train.torch

    task: WorkerTask = train_loop_config["task"]
    config = task.config
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config.cpus_per_worker)
    torch.manual_seed(config.seed + rank)
    preprocessing = config.preprocessing(task.model_name)  # validation's, the artifact's
    train_preprocessing = replace(preprocessing, image_size=config.image_size)
    num_classes = len(task.class_names)
    class_weights = None
    if task.class_weights:
        class_weights = torch.tensor(task.class_weights, dtype=torch.float32, device=device)
    phases = Phases.of(config, task.model_name)

    model = create_model(task.model_name, num_classes, **config.model_kwargs)
    model.load_state_dict(ray.get(task.initial_state))
    state, saved = TrainingState(), {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        saved = read_checkpoint(checkpoint)
        model.load_state_dict(saved.pop("model"))
        state = TrainingState(**{name: saved.pop(name) for name in vars(state)})
        if state.epoch < config.epochs and not state.stopped_early:
            state.resumed_after.append(state.epoch)
        logger.info("Resuming %s after epoch %d from %s", task.model_name, state.epoch, checkpoint.path)

    phase = phases.at(state.epoch)
    model, optimizer, scheduler = _configure_phase(model, phase, phases.length(phase), config)
    if saved.get("phase") == phase and saved.get("optimizer") is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    elif checkpoint:  # the checkpoint ended a phase: the next one starts fresh, patience too
        state.best_val_loss, state.stale_epochs = math.inf, 0

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_size = max(1, config.batch_size // world_size)
    for epoch in range(state.epoch, config.epochs):
        if state.stopped_early:
            break
        if phases.at(epoch) != phase:
            phase = phases.at(epoch)
            model, optimizer, scheduler = _configure_phase(model, phase, phases.length(phase), config)
            state.best_val_loss, state.stale_epochs = math.inf, 0  # patience starts again
        batches = train_shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=batch_size * 8, prefetch_batches=2
        )
        train_totals = train_one_epoch(
            model, batches, optimizer, train_preprocessing, config.augmentation, device, config.label_smoothing,
            class_weights, num_classes, config.copies,
        )  # fmt: skip
        _broadcast_buffers(model)
        val_batches = val_shard.iter_batches(batch_size=batch_size * 2, batch_format="numpy", prefetch_batches=2)
        val_totals = validate(unwrap(model), val_batches, preprocessing, device, num_classes)
        metrics = _epoch_metrics(train_totals, val_totals, task.class_names, world_size)
        skipped = _all_gather_paths(train_totals.skipped + val_totals.skipped)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(metrics["val_loss"])
        else:
            scheduler.step()
        if metrics["val_loss"] < state.best_val_loss - 1e-6:
            state.best_val_loss, state.stale_epochs = metrics["val_loss"], 0
        else:
            state.stale_epochs += 1
        state.stopped_early = 0 < config.early_stopping_patience <= state.stale_epochs
        state.epoch = epoch + 1
        state.skipped = sorted(set(state.skipped) | set(skipped))
        metrics.update(epoch=epoch + 1, phase=phase, lr=lr, num_skipped=len(state.skipped))
        state.history.append(metrics)
        _report(metrics, state, phase, model, optimizer, scheduler, rank)
