"""Training on Ray Train: the same code on one CPU or many GPUs.

The driver lists the labelled tree, splits it, streams decoded photos to the workers with Ray Data,
runs one `TorchTrainer` per model, and writes each model's artifact to `<output>/<model>/`.
Checkpoints go to `<output>/checkpoints/<model>/`: a restarted run (same output) resumes from its
latest checkpoint, and `max_failures` lets a run survive lost workers and nodes.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from animals10 import storage
from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing
from animals10.config import DEFAULT_MODELS, KEEP_CHOICES, RECIPES, TrainConfig, recipe_config
from animals10.data import LabelledTree, decode_batch, read_labelled_tree, split_indices
from animals10.engine import EpochTotals, evaluate, train_one_epoch
from animals10.metrics import classification_metrics
from animals10.models import create_model, get_model_spec, list_models, unwrap
from animals10.transforms import Augmentation

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MAX_NAMED_SKIPPED = 100  # bad files named in the model card; all are counted


# --- on each worker --------------------------------------------------------------------------------


def _all_reduce(values: list[float]) -> list[float]:
    """Sums across workers (a no-op for one worker)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _all_gather_paths(paths: list[str]) -> list[str]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sorted(paths)
    gathered: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, paths)
    return sorted(p for part in gathered for p in part)


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Gives every worker rank 0's BatchNorm statistics. DDP broadcasts them before each training
    forward pass, but that pass then updates each worker's own copy: without this, workers would
    validate slightly different models, and not the one the checkpoint saves."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def _configure_phase(model: torch.nn.Module, phase: str, phase_epochs: int, loop: dict):
    """Freezes or unfreezes the backbone for `phase`, then wraps (DDP) and builds optimizer and schedule.

    DDP registers only trainable parameters, so the model is wrapped anew when a phase starts."""
    import ray.train.torch

    plain = unwrap(model)
    if phase in ("head", "fine_tune"):
        plain.freeze_backbone()
    if phase == "fine_tune":
        plain.unfreeze_top(loop["unfreeze_fraction"])
        if loop["freeze_batchnorm"]:
            plain.freeze_batchnorm()
    lr = loop["fine_tune_lr"] if phase == "fine_tune" else loop["lr"]
    params = [p for p in plain.parameters() if p.requires_grad]
    optimizer_class = torch.optim.AdamW if loop["optimizer"] == "adamw" else torch.optim.Adam
    optimizer = optimizer_class(params, lr=lr, weight_decay=loop["weight_decay"])
    if loop["schedule"] == "cosine":
        warmup = min(loop["warmup_epochs"], max(phase_epochs - 1, 0))

        def factor(epoch: int) -> float:  # epochs since the phase began -> share of the base rate
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / max(phase_epochs - warmup, 1)))

        scheduler = LambdaLR(optimizer, factor)
    else:
        scheduler = ReduceLROnPlateau(
            optimizer, mode="min", factor=loop["plateau_factor"], patience=loop["plateau_patience"]
        )
    return ray.train.torch.prepare_model(plain), optimizer, scheduler


def _epoch_metrics(train: EpochTotals, val: EpochTotals, class_names: list[str]) -> dict:
    """Workers' sums -> the epoch's metrics (identical on every worker)."""
    num_classes = len(class_names)
    summed = _all_reduce(
        [
            train.loss_sum,
            train.num_correct,
            train.num_images,
            val.loss_sum,
            val.num_images,
            *val.confusion.ravel().tolist(),
        ]
    )
    train_loss, train_correct, train_images, val_loss, val_images = summed[:5]
    confusion = np.asarray(summed[5:], dtype=np.int64).reshape(num_classes, num_classes)
    scores = classification_metrics(confusion, class_names)
    seconds = max(_all_reduce([train.seconds])[0] / max(1, _world_size()), 1e-9)
    return {
        "train_loss": train_loss / max(train_images, 1),
        "train_accuracy": train_correct / max(train_images, 1),
        "val_loss": val_loss / max(val_images, 1),
        "val_accuracy": scores["accuracy"],
        "val_macro_precision": scores["macro_precision"],
        "val_macro_recall": scores["macro_recall"],
        "images_per_second": train_images / seconds,
        "num_train_images": int(train_images),
        "num_val_images": int(val_images),
    }


def _world_size() -> int:
    import ray.train

    return ray.train.get_context().get_world_size()


def train_loop_per_worker(loop: dict) -> None:
    """Ray Train's per-worker function: resumes from the latest checkpoint when there is one."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(loop["cpus_per_worker"])
    torch.manual_seed(loop["seed"] + rank)
    preprocessing = Preprocessing.from_dict(loop["preprocessing"])  # validation's, the artifact's
    train_preprocessing = replace(preprocessing, image_size=loop["image_size"])
    augmentation = Augmentation.from_dict(loop["augmentation"])
    class_weights = (
        torch.tensor(loop["class_weights"], dtype=torch.float32, device=device) if loop["class_weights"] else None
    )
    class_names = loop["class_names"]
    transfer = get_model_spec(loop["model_name"]).transfer
    head_epochs = max(1, round(loop["epochs"] * loop["head_epochs_fraction"])) if transfer else 0

    model = create_model(loop["model_name"], len(class_names), **loop["model_kwargs"])
    model.load_state_dict(ray.get(loop["initial_state"]))  # ImageNet backbone or random init, loaded once by the driver
    state = {
        "epoch": 0,
        "history": [],
        "best_val_loss": float("inf"),
        "stale_epochs": 0,
        "stopped_early": False,
        "skipped": [],
        "resumed_after": [],
    }
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as checkpoint_dir:
            saved = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(saved.pop("model"))
        state.update(saved)
        if state["epoch"] < loop["epochs"] and not state["stopped_early"]:
            state["resumed_after"].append(state["epoch"])  # the epochs a restart continued from
        logger.info("Resuming %s after epoch %d from %s", loop["model_name"], state["epoch"], checkpoint.path)

    def phase_of(epoch: int) -> str:
        return "train" if not transfer else ("head" if epoch < head_epochs else "fine_tune")

    def epochs_in(phase: str) -> int:
        return {"train": loop["epochs"], "head": head_epochs, "fine_tune": loop["epochs"] - head_epochs}[phase]

    phase = phase_of(state["epoch"])
    model, optimizer, scheduler = _configure_phase(model, phase, epochs_in(phase), loop)
    saved_phase, optimizer_state, scheduler_state = (
        state.pop("phase", None),
        state.pop("optimizer", None),
        state.pop("scheduler", None),
    )
    if saved_phase == phase and optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
    elif checkpoint:  # the checkpoint ended a phase: the next one starts fresh, patience too
        state["best_val_loss"], state["stale_epochs"] = float("inf"), 0

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    batch_size = max(1, loop["batch_size"] // context.get_world_size())
    for epoch in range(state["epoch"], loop["epochs"]):
        if state["stopped_early"]:
            break
        if phase_of(epoch) != phase:
            phase = phase_of(epoch)
            model, optimizer, scheduler = _configure_phase(model, phase, epochs_in(phase), loop)
            state["best_val_loss"], state["stale_epochs"] = float("inf"), 0  # patience starts again
        batches = train_shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", local_shuffle_buffer_size=batch_size * 8, prefetch_batches=2
        )
        train_totals = train_one_epoch(
            model,
            batches,
            optimizer,
            train_preprocessing,
            augmentation,
            device,
            loop["label_smoothing"],
            loop["mixed_precision"],
            class_weights,
            len(class_names),
            loop["copies"],
        )
        _broadcast_buffers(model)
        val_batches = val_shard.iter_batches(batch_size=batch_size * 2, batch_format="numpy", prefetch_batches=2)
        val_totals = evaluate(
            unwrap(model), val_batches, preprocessing, device, len(class_names), loop["mixed_precision"]
        )
        metrics = _epoch_metrics(train_totals, val_totals, class_names)
        skipped = _all_gather_paths(train_totals.skipped + val_totals.skipped)
        lr = optimizer.param_groups[0]["lr"]
        if isinstance(scheduler, ReduceLROnPlateau):
            scheduler.step(metrics["val_loss"])
        else:
            scheduler.step()
        if metrics["val_loss"] < state["best_val_loss"] - 1e-6:
            state["best_val_loss"], state["stale_epochs"] = metrics["val_loss"], 0
        else:
            state["stale_epochs"] += 1
        state["stopped_early"] = 0 < loop["early_stopping_patience"] <= state["stale_epochs"]
        state["epoch"] = epoch + 1
        state["skipped"] = sorted(set(state["skipped"]) | set(skipped))
        metrics.update(epoch=epoch + 1, phase=phase, lr=lr, num_skipped=len(state["skipped"]))
        state["history"].append(metrics)

        # The checkpoint is complete on local disk before it is reported; Ray then persists it.
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            saved_checkpoint = None
            if rank == 0:
                torch.save(
                    {
                        **state,
                        "phase": phase,
                        "model": unwrap(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                    Path(checkpoint_dir) / STATE_FILE,
                )
                saved_checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir)
            ray.train.report(metrics, checkpoint=saved_checkpoint)


# --- on the driver ---------------------------------------------------------------------------------


@dataclass
class TrainedModel:
    name: str
    artifact_uri: str
    metrics: dict
    history: list[dict]


def _history_files(history: list[dict]) -> dict[str, bytes]:
    text = io.StringIO()
    columns = list(history[0]) if history else []
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return {"history.json": json.dumps(history, indent=2).encode(), "history.csv": text.getvalue().encode()}


def _dataset(records: list[dict], image_size: int):
    """Paths -> decoded photos, streamed: files are read and decoded in Ray Data tasks, in parallel."""
    import ray.data

    # Per-epoch progress bars of the workers' data streams would bury the training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    num_blocks = max(1, min(len(records) // 16, 64))
    return ray.data.from_items(records, override_num_blocks=num_blocks).map_batches(
        decode_batch, fn_kwargs={"image_size": image_size}, batch_size=16
    )


def _datasets(config: TrainConfig, tree: LabelledTree, train_idx: list[int], val_idx: list[int]) -> tuple[dict, bool]:
    """The training and validation datasets, and whether they were decoded once and kept in the object
    store (`config.cache_decoded`; by default when they take at most a quarter of it). Decoding is
    deterministic (augmentation happens on the workers), so kept photos train the same model."""
    import ray

    datasets = {
        "train": _dataset(tree.records(train_idx), config.train_decode_size),
        "val": _dataset(tree.records(val_idx), config.inference_size),
    }
    decoded_bytes = 3 * (len(train_idx) * config.train_decode_size**2 + len(val_idx) * config.inference_size**2)
    keep = config.cache_decoded
    if keep is None:
        keep = decoded_bytes <= ray.cluster_resources().get("object_store_memory", 0) / 4
    if keep:
        logger.info(
            "Decoding %d photos once (%.0f MB) and keeping them for every epoch",
            len(train_idx) + len(val_idx),
            decoded_bytes / 1e6,
        )
        datasets = {name: dataset.materialize() for name, dataset in datasets.items()}
    return datasets, keep


def _run_config(config: TrainConfig, model_name: str):
    import ray.train

    fs, path = storage.arrow_filesystem(storage.join(config.output, "checkpoints"))
    return ray.train.RunConfig(
        name=model_name,
        storage_path=path,
        storage_filesystem=fs,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
        ),
        failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
    )


def _load_state(checkpoint) -> dict:
    with checkpoint.as_directory() as checkpoint_dir:
        return torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def initial_model(config: TrainConfig, model_name: str, class_names: list[str]) -> torch.nn.Module:
    """The model before training: ImageNet backbone for transfer models (or a clear error), its head
    started from the ImageNet classifier where the recipe says so; else random."""
    config = config.for_model(model_name)
    if not get_model_spec(model_name).transfer:
        return create_model(model_name, len(class_names), **config.model_kwargs)
    head = {"head_classes": class_names} if config.imagenet_head and config.pretrained else {}
    return create_model(
        model_name,
        len(class_names),
        pretrained=config.pretrained,
        weights_path=config.weights,
        **config.model_kwargs,
        **head,
    )


def train_model(
    config: TrainConfig,
    model_name: str,
    tree: LabelledTree,
    train_idx: list[int],
    val_idx: list[int],
    initial: torch.nn.Module,
) -> TrainedModel:
    """Trains one model with Ray Train and writes its artifact to `<output>/<model>/`."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = get_model_spec(model_name)
    config = config.for_model(model_name)
    epochs, model_kwargs = config.epochs, config.model_kwargs
    preprocessing = Preprocessing(config.inference_size, spec.mean, spec.std)  # training itself runs at image_size
    train_counts = tree.class_counts(train_idx)
    # Inverse class frequency, mean 1 over the photos: a class with half the photos weighs double.
    class_weights = (
        [len(train_idx) / (len(train_counts) * max(n, 1)) for n in train_counts.values()]
        if config.class_weighting
        else None
    )
    use_gpu = config.use_gpu if config.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    datasets, decoded_once = _datasets(config, tree, train_idx, val_idx)
    loop = {
        **config.to_dict(),
        "model_name": model_name,
        "class_names": tree.class_names,
        "class_weights": class_weights,
        "preprocessing": preprocessing.to_dict(),
        # Loaded once by the driver: workers on other nodes need neither the network nor torch's cache.
        "initial_state": ray.put(initial.state_dict()),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}
        ),
        run_config=_run_config(config, model_name),
        datasets=datasets,
    )
    logger.info(
        "Training %s for up to %d epochs on %d worker(s), %s",
        model_name,
        epochs,
        config.num_workers,
        "GPU" if use_gpu else "CPU",
    )
    result = trainer.fit()
    latest = _load_state(result.checkpoint)
    kept = (
        latest
        if config.keep == "last"
        else _load_state(result.get_best_checkpoint(metric="val_loss", mode="min") or result.checkpoint)
    )
    history = latest["history"]
    kept_metrics = history[kept["epoch"] - 1]

    model = create_model(model_name, len(tree.class_names), **model_kwargs)
    model.load_state_dict(kept["model"])
    card = ModelCard(
        architecture=model_name,
        class_names=tree.class_names,
        preprocessing=preprocessing,
        model_kwargs=model_kwargs,
        training={
            **{k: v for k, v in config.to_dict().items() if k not in ("models", "model_settings")},
            "class_weights": class_weights,
            "epochs_run": len(history),
            "use_gpu": use_gpu,
            "decoded_once": decoded_once,
            "resumed_after_epochs": latest["resumed_after"],
        },
        metrics={"kept_epoch": kept["epoch"], **{k: v for k, v in kept_metrics.items() if k != "epoch"}},
        data={
            "data_uri": tree.root,
            "val_fraction": config.val_fraction,
            "split_seed": config.seed,
            "num_train": len(train_idx),
            "num_val": len(val_idx),
            "class_counts": tree.class_counts(),
            "num_skipped": len(latest["skipped"]),
            "skipped_files": latest["skipped"][:MAX_NAMED_SKIPPED],
        },
    )
    uri = storage.join(config.output, model_name)
    save_artifact(model, card, uri, extra_files=_history_files(history))
    if latest["skipped"]:
        logger.warning(
            "%d file(s) could not be decoded and were skipped: %s", len(latest["skipped"]), latest["skipped"][:10]
        )
    return TrainedModel(model_name, uri, card.metrics, history)


def train_models(config: TrainConfig) -> list[TrainedModel]:
    """Trains every model of `config` on the same split; returns them in order.

    Everything a user can get wrong (model names, data, output, pretrained weights) is checked
    before Ray starts."""
    for name in config.models:
        get_model_spec(name)
    storage.set_s3_endpoint(config.s3_endpoint)
    tree = read_labelled_tree(config.data)
    train_idx, val_idx = split_indices(tree, config.val_fraction, config.seed)
    storage.check_writable(config.output)
    initial = {name: initial_model(config, name, tree.class_names) for name in config.models}
    logger.info(
        "%d photos in %d classes under %s: %d for training, %d for validation",
        len(tree.paths),
        len(tree.class_names),
        tree.root,
        len(train_idx),
        len(val_idx),
    )
    for name, count in tree.class_counts().items():
        logger.info(
            "  %-12s %6d photos (train %d, val %d)",
            name,
            count,
            tree.class_counts(train_idx)[name],
            tree.class_counts(val_idx)[name],
        )
    init_ray(min_cpus=config.num_workers * config.cpus_per_worker + 1)
    return [train_model(config, name, tree, train_idx, val_idx, initial[name]) for name in config.models]


def comparison_table(models: list[TrainedModel]) -> str:
    """The study's table: validation loss, accuracy, precision and recall per model."""
    header = (
        f"{'Model':<20} {'Val loss':>9} {'Accuracy':>9} {'Precision':>10} {'Recall':>8} {'Epochs':>7} {'Images/s':>9}"
    )
    rows = [header, "-" * len(header)]
    for m in models:
        rows.append(
            f"{m.name:<20} {m.metrics['val_loss']:>9.4f} {m.metrics['val_accuracy']:>9.2%} {m.metrics['val_macro_precision']:>10.2%} "
            f"{m.metrics['val_macro_recall']:>8.2%} {len(m.history):>7d} {m.metrics['images_per_second']:>9.1f}"
        )
    return "\n".join(rows)


# --- command line ----------------------------------------------------------------------------------


def _number(valid, wanted: str, cast=float):
    """An argparse type: a number for which `valid` holds, as `cast`, else a usage error that says what is `wanted`."""

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every check
        if not valid(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {wanted}")
        return cast(value)

    return parse


_alpha = _number(lambda v: v >= 0, "a Beta distribution's alpha: give a number >= 0 (0 turns it off)")
_copies = _number(lambda v: v >= 1 and v.is_integer(), "a number of copies: give a whole number >= 1", cast=int)
_orientations = _number(
    lambda v: v >= 0 and v.is_integer(), "a number of orientations: give a whole number >= 0 (0 turns it off)", cast=int
)
_fraction = _number(lambda v: 0 < v < 1, "a share of the photos: give a number above 0 and below 1")
_probability = _number(lambda v: 0 <= v <= 1, "a probability: give a number from 0 to 1 (0 turns it off)")


def add_train_arguments(parser) -> None:
    defaults = TrainConfig()
    parser.add_argument(
        "--data", required=True, help="labelled tree <root>/<class>/<photo>, a local dir or s3://bucket/prefix"
    )
    parser.add_argument(
        "--model", action="append", choices=list_models(), help=f"repeatable (default: {' and '.join(DEFAULT_MODELS)})"
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        default="best",
        help="named training settings (see README); options below override them",
    )
    parser.add_argument(
        "--output", default=defaults.output, help="local dir or s3:// URI for artifacts and checkpoints"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        help="every model's epochs (default: the recipe's; best: 120 for custom_cnn, 20 for transfer models)",
    )
    parser.add_argument("--batch-size", type=int, help=f"global batch size (default {defaults.batch_size})")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default {defaults.lr})")
    parser.add_argument(
        "--fine-tune-lr", type=float, help=f"transfer models' fine-tuning rate (default {defaults.fine_tune_lr})"
    )
    parser.add_argument(
        "--augment-size",
        type=int,
        metavar="PX",
        help="decode and augment training photos at this size, then resize them to --image-size (best: 128 for custom_cnn)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        metavar="PX",
        help="input size of validation and inference, a little above --image-size to offset the zoom of random crops (best: 72 for custom_cnn)",
    )
    parser.add_argument(
        "--keep",
        choices=KEEP_CHOICES,
        help="the epoch the artifact keeps (default: the recipe's; study: best_val_loss, best: last)",
    )
    parser.add_argument(
        "--freeze-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transfer models: BatchNorm keeps its ImageNet statistics while fine-tuning (best: on)",
    )
    parser.add_argument(
        "--imagenet-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="transfer models: the head starts from the ImageNet classifier's rows of each class (best: on)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        help="input size in pixels of every model (default: the recipe's: 128; best: 64 for custom_cnn, 224 for transfer models)",
    )
    parser.add_argument(
        "--trivial-augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TrivialAugment: one random operation per photo",
    )
    parser.add_argument("--mixup", type=_alpha, metavar="ALPHA", help="MixUp with this Beta(alpha, alpha) (0: off)")
    parser.add_argument("--cutmix", type=_alpha, metavar="ALPHA", help="CutMix with this Beta(alpha, alpha) (0: off)")
    parser.add_argument(
        "--grayscale",
        type=_probability,
        metavar="P",
        help="turn each training photo grey with probability P (default: the recipe's; 0: off)",
    )
    parser.add_argument(
        "--copies",
        type=_copies,
        metavar="N",
        help="train on each photo of a batch in N differently augmented copies (default: the recipe's; 1: once)",
    )
    parser.add_argument(
        "--scattering",
        type=_orientations,
        metavar="N",
        help="custom_cnn: a fixed first block of Morlet wavelets at N orientations, a scattering transform (default: the recipe's; best: 8; 0: a learned first block)",
    )
    parser.add_argument("--num-workers", type=int, help="Ray Train workers (default 1)")
    parser.add_argument("--cpus-per-worker", type=int, help="CPUs reserved per worker (default 1)")
    parser.add_argument(
        "--use-gpu", action=argparse.BooleanOptionalAction, default=None, help="default: GPUs when the cluster has them"
    )
    parser.add_argument(
        "--cache-decoded",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode the photos once and keep them in Ray's object store for every epoch (default: when they take at most a quarter of it)",
    )
    parser.add_argument("--weights", help="file with the backbone's ImageNet weights (torchvision's mobilenet_v2 .pth)")
    parser.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        default=None,
        help="random init (no ImageNet weights)",
    )
    parser.add_argument("--max-failures", type=int, help="worker/node failures to recover from (default 0)")
    parser.add_argument(
        "--val-fraction",
        type=_fraction,
        metavar="F",
        help=f"share of each class's photos held out for validation (default {defaults.val_fraction}); on a small set, less leaves more to train on",
    )
    parser.add_argument("--seed", type=int, help="seed of the split and initialisation (default 42)")
    parser.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: AWS, or $AWS_ENDPOINT_URL)")


def config_from_args(args) -> TrainConfig:
    config = recipe_config(
        args.recipe,
        data=args.data,
        models=tuple(args.model or DEFAULT_MODELS),
        output=args.output,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        fine_tune_lr=args.fine_tune_lr,
        image_size=args.image_size,
        keep=args.keep,
        augment_size=args.augment_size,
        test_size=args.test_size,
        freeze_batchnorm=args.freeze_batchnorm,
        imagenet_head=args.imagenet_head,
        num_workers=args.num_workers,
        cpus_per_worker=args.cpus_per_worker,
        use_gpu=args.use_gpu,
        cache_decoded=args.cache_decoded,
        weights=args.weights,
        pretrained=args.pretrained,
        max_failures=args.max_failures,
        seed=args.seed,
        val_fraction=args.val_fraction,
        s3_endpoint=args.s3_endpoint,
        copies=args.copies,
    )
    config = config.with_augmentation(
        trivial_augment=args.trivial_augment, mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, grayscale=args.grayscale
    )
    scattering = None if args.scattering is None else {"scattering": args.scattering} if args.scattering else {}
    return config.with_model_settings("custom_cnn", model_kwargs=scattering)


def init_ray(min_cpus: int = 1) -> None:
    """Joins the cluster in RAY_ADDRESS (as `ray job submit` sets it) or one started with `ray start`,
    or else starts a local Ray with at least `min_cpus` logical CPUs: training workers reserve
    theirs, and Ray Data needs one more to read and decode photos beside them."""
    import ray

    if ray.is_initialized():
        return
    env = {name: os.environ[name] for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3") if os.environ.get(name)}
    options = {"runtime_env": {"env_vars": env} if env else None, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**options)
        return
    try:
        ray.init(num_cpus=max(os.cpu_count() or 1, min_cpus), **options)
    except ValueError:  # an existing local cluster (`ray start`): join it as it is
        ray.init(**options)


def run_train(args) -> int:
    models = train_models(config_from_args(args))
    print(comparison_table(models))
    for m in models:
        print(f"{m.name}: artifact written to {m.artifact_uri}")
    return 0
