"""The training driver (Ray Train): data split, datasets, one `TorchTrainer` per model, artifacts.

The driver lists the labelled tree, splits it, streams decoded photos to the workers with Ray Data,
runs one `TorchTrainer` per model (the workers run `animals10.training.worker`), and writes each model's
artifact to `<output>/<model>/`. Checkpoints go to `<output>/checkpoints/<model>/`: a restarted run
(same output) resumes from its latest checkpoint, and `max_failures` lets a run survive lost workers
and nodes.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace

import torch

from animals10 import storage
from animals10.artifact import save_artifact, write_card
from animals10.card import ModelCard, Preprocessing
from animals10.cluster import connect_ray
from animals10.data import LabelledTree, decode_batch, read_labelled_tree, split_indices
from animals10.errors import SettingsError
from animals10.models import create_model, folder_name, get_model_spec
from animals10.training.config import TrainConfig
from animals10.training.open_world_fit import fit_open_world
from animals10.training.worker import WorkerTask, read_checkpoint, train_loop_per_worker

logger = logging.getLogger(__name__)

MAX_NAMED_SKIPPED = 100  # bad files named in the model card; all are counted


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


def _dataset(records: list[dict], preprocessing: Preprocessing):
    """Paths -> decoded photos, streamed: files are read and decoded in Ray Data tasks, in parallel."""
    import ray.data

    # Per-epoch progress bars of the workers' data streams would bury the training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    num_blocks = max(1, min(len(records) // 16, 64))
    return ray.data.from_items(records, override_num_blocks=num_blocks).map_batches(
        decode_batch, fn_kwargs={"preprocessing": preprocessing}, batch_size=16
    )


def _datasets(
    config: TrainConfig, model_name: str, tree: LabelledTree, train_idx: list[int], val_idx: list[int]
) -> tuple[dict, bool]:
    """The training and validation datasets, and whether they were decoded once and kept in the object
    store (`config.cache_decoded`; by default when they take at most a quarter of it). Decoding is
    deterministic (augmentation happens on the workers), so kept photos train the same model."""
    import ray

    preprocessing = config.preprocessing(model_name)
    datasets = {
        "train": _dataset(tree.records(train_idx), replace(preprocessing, image_size=config.train_decode_size)),
        "val": _dataset(tree.records(val_idx), preprocessing),
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


def _run_config(config: TrainConfig, model_name: str, callbacks: list):
    import ray.train

    fs, path = storage.arrow_filesystem(storage.join(config.output, "checkpoints"))
    return ray.train.RunConfig(
        name=folder_name(model_name),
        storage_path=path,
        storage_filesystem=fs,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
        ),
        failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        callbacks=callbacks,
    )


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


def check_input_size(config: TrainConfig, model_name: str) -> None:
    """A model that takes only the size of its weights (a ViT's position embeddings) refuses another one."""
    spec = get_model_spec(model_name)
    sizes = {config.image_size, config.inference_size}
    if spec.fixed_input_size and sizes != {spec.input_size}:
        raise SettingsError(
            f"{model_name} takes only {spec.input_size} px photos (its weights fix the input size), not "
            f"{' and '.join(str(s) for s in sorted(sizes))} px; leave out --image-size and --test-size."
        )


def _calibration(epoch: dict) -> dict:
    """The kept epoch's temperature, fitted on its validation logits, with the figures before and after."""
    return {
        "temperature": epoch["val_temperature"],
        "fitted_on": "validation",
        "val_nll": epoch["val_loss"],
        "val_nll_calibrated": epoch["val_loss_calibrated"],
        "val_ece": epoch["val_ece"],
        "val_ece_calibrated": epoch["val_ece_calibrated"],
    }


def _open_world(config: TrainConfig, model_name: str, uri: str, tree: LabelledTree, train_idx, val, use_gpu) -> dict:
    """The kept model's open-world statistics and thresholds (`fit_open_world`), or none, with a warning
    saying why (photos of that artifact are then never flagged unknown)."""
    from ray.exceptions import RayError

    preprocessing = config.preprocessing(model_name)  # inference's: no augmentation
    train = _dataset(tree.records(train_idx), preprocessing)
    try:
        open_world = fit_open_world(
            uri, train, val, len(tree.class_names), config.num_workers, use_gpu, config.cpus_per_worker
        )
    except (ValueError, RayError) as error:  # too few photos, or a lost actor: the artifact stays as it is
        logger.warning("%s: no open-world statistics (%s); no photo will be flagged unknown.", model_name, error)
        return {}
    logger.info(
        "%s: photos with a %s score above %.4g are unknown (%.0f%% of validation photos are below it)",
        model_name, open_world["score"], open_world["threshold"], 100 * open_world["true_positive_rate"],
    )  # fmt: skip
    return open_world


def _class_weights(tree: LabelledTree, train_idx: list[int]) -> list[float]:
    """Inverse class frequency, mean 1 over the photos: a class with half the photos weighs double."""
    counts = tree.class_counts(train_idx)
    return [len(train_idx) / (len(counts) * max(n, 1)) for n in counts.values()]


def worker_task(
    config: TrainConfig, model_name: str, tree: LabelledTree, train_idx: list[int], initial_state
) -> WorkerTask:
    """What every worker of one model's run receives: the configuration resolved for that model, whole,
    and what the driver learned from the data. `initial_state`: an ObjectRef of the initial weights,
    loaded once by the driver, so that workers on other nodes need neither the network nor torch's cache."""
    config = config.for_model(model_name)
    class_weights = _class_weights(tree, train_idx) if config.class_weighting else None
    return WorkerTask(config, model_name, tree.class_names, class_weights, initial_state)


def _fit(config: TrainConfig, task: WorkerTask, datasets: dict, use_gpu: bool):
    """Runs the workers to the last epoch, logging a line per epoch as they go: (the latest checkpoint's
    state, the kept epoch's state)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from animals10.training.progress import EpochReports, epoch_queue, follow_epochs

    scaling = ScalingConfig(
        num_workers=config.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.cpus_per_worker}
    )
    reports = epoch_queue()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"task": task},
        scaling_config=scaling,
        run_config=_run_config(config, task.model_name, callbacks=[EpochReports(reports)]),
        datasets=datasets,
    )
    where = f"{config.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s)"
    logger.info("Training %s for up to %d epochs on %s", task.model_name, config.epochs, where)
    fit = Future()

    def run() -> None:  # in a daemon thread: Ctrl-C on the driver is not held up by it
        try:
            fit.set_result(trainer.fit())
        except BaseException as error:  # noqa: BLE001 - handed to the driver's thread by fit.result()
            fit.set_exception(error)

    threading.Thread(target=run, name="fit", daemon=True).start()
    follow_epochs(task.model_name, config.epochs, reports, fit)
    result = fit.result()
    latest = read_checkpoint(result.checkpoint)
    if config.keep == "last":
        return latest, latest
    return latest, read_checkpoint(result.get_best_checkpoint(metric="val_loss", mode="min") or result.checkpoint)


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

    task = worker_task(config, model_name, tree, train_idx, ray.put(initial.state_dict()))
    config, class_weights = task.config, task.class_weights
    use_gpu = config.use_gpu if config.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0
    datasets, decoded_once = _datasets(config, model_name, tree, train_idx, val_idx)
    latest, kept = _fit(config, task, datasets, use_gpu)
    history = latest["history"]
    model = create_model(model_name, len(tree.class_names), **config.model_kwargs)
    model.load_state_dict(kept["model"])
    card = ModelCard(
        architecture=model_name,
        class_names=tree.class_names,
        preprocessing=config.preprocessing(model_name),  # validation's and inference's: training runs at image_size
        model_kwargs=config.model_kwargs,
        training={
            **{k: v for k, v in config.to_dict().items() if k not in ("models", "model_settings")},
            "class_weights": class_weights,
            "epochs_run": len(history),
            "use_gpu": use_gpu,
            "decoded_once": decoded_once,
            "resumed_after_epochs": latest["resumed_after"],
        },
        metrics={"kept_epoch": kept["epoch"], **{k: v for k, v in history[kept["epoch"] - 1].items() if k != "epoch"}},
        calibration=_calibration(history[kept["epoch"] - 1]),
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
    uri = storage.join(config.output, folder_name(model_name))
    save_artifact(model, card, uri, extra_files=_history_files(history))
    card.open_world = _open_world(config, model_name, uri, tree, train_idx, datasets["val"], use_gpu)
    write_card(card, uri)
    why = "the last" if config.keep == "last" else "the best validation loss"
    logger.info("%s: kept epoch %d (%s); artifact in %s", model_name, kept["epoch"], why, uri)
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
        check_input_size(config.for_model(name), name)
    storage.set_s3_endpoint(config.s3_endpoint)
    tree = read_labelled_tree(config.data)
    train_idx, val_idx = split_indices(tree, config.val_fraction, config.seed)
    storage.check_writable(config.output)
    initial = {name: initial_model(config, name, tree.class_names) for name in config.models}
    train_counts, val_counts = tree.class_counts(train_idx), tree.class_counts(val_idx)
    logger.info(
        "%d photos in %d classes under %s: %d for training, %d for validation (%s)",
        len(tree.paths),
        len(tree.class_names),
        tree.root,
        len(train_idx),
        len(val_idx),
        ", ".join(f"{name} {train_counts[name]}/{val_counts[name]}" for name in tree.class_names),
    )
    connect_ray(min_cpus=config.num_workers * config.cpus_per_worker + 1)
    return [train_model(config, name, tree, train_idx, val_idx, initial[name]) for name in config.models]
