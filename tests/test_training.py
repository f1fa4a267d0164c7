"""Training with Ray Train (animals10.training.driver and .worker) on a real local Ray: learning, artifacts,
resuming, the job script; and what the driver hands each worker."""

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pytest

from animals10.data import read_labelled_tree, split_indices
from animals10.imaging import load_array
from animals10.predictor import Predictor
from animals10.training.config import RECIPES, TrainConfig
from animals10.training.driver import train_models
from animals10.training.worker import WorkerTask

ROOT = Path(__file__).resolve().parents[1]


def validation_prediction(artifact_uri: str, data_dir):
    """The artifact's `Prediction` of its own validation split, recomputed outside of training, and the labels."""
    predictor = Predictor(artifact_uri, device="cpu")
    tree = read_labelled_tree(data_dir)
    _, val = split_indices(tree, 0.2, 42)
    images = np.stack([load_array(Path(tree.paths[i]).read_bytes(), predictor.preprocessing) for i in val])
    return predictor.predict(images), np.array([tree.labels[i] for i in val])


def validation_accuracy(artifact_uri: str, data_dir) -> float:
    prediction, labels = validation_prediction(artifact_uri, data_dir)
    return float(np.mean(prediction.probabilities.argmax(1) == labels))


def test_best_recipe_starts_the_transfer_head_from_imagenet_and_study_at_random():
    import torch

    from animals10.labels import ANIMALS10_CLASSES
    from animals10.models.transfer import load_efficientnet_lite0_imagenet
    from animals10.training.config import recipe_config
    from animals10.training.driver import initial_model

    imagenet = load_efficientnet_lite0_imagenet().classifier
    cat = ANIMALS10_CLASSES.index("cat")
    cat_row = imagenet.weight[281:286].mean(0)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    best = initial_model(recipe_config("best", data="d"), "efficientnet_lite0", ANIMALS10_CLASSES).head[-1]
    study = initial_model(recipe_config("study", data="d"), "efficientnet_lite0", ANIMALS10_CLASSES).head[-1]
    assert torch.allclose(best.weight[cat], cat_row) and not torch.allclose(study.weight[cat], cat_row)


@pytest.mark.parametrize(
    "model_name, epochs, augment_size, test_size, cache_decoded, copies",
    [("custom_cnn", 10, 96, 72, None, 2), ("efficientnet_lite0", 4, None, None, False, 1)],
)
def test_two_cpu_workers_learn_the_demo_data(
    ray_session, demo_tree, tmp_path, model_name, epochs, augment_size, test_size, cache_decoded, copies
):
    """The CNN's training photos are decoded at 96 px and resized to its 64 px input after augmentation,
    each in two augmented copies per step; it is validated, and then predicts, at 72 px. Its few photos are
    decoded once and kept for every epoch (the default for photos that fit); the transfer model's are
    decoded again each epoch."""
    config = TrainConfig(
        data=str(demo_tree), output=str(tmp_path / "run"), models=(model_name,), epochs=epochs, image_size=64,
        num_workers=2, batch_size=16, augment_size=augment_size, test_size=test_size, cache_decoded=cache_decoded,
        copies=copies,
    )  # fmt: skip
    [trained] = train_models(config)
    assert len(trained.history) == epochs
    assert [h["epoch"] for h in trained.history] == list(range(1, epochs + 1))
    # Chance is 10%: the model really learned.
    assert trained.metrics["val_accuracy"] >= 0.5
    assert validation_accuracy(trained.artifact_uri, demo_tree) == pytest.approx(
        trained.metrics["val_accuracy"], abs=1e-6
    )
    card = json.loads((tmp_path / "run" / model_name / "model_card.json").read_text())
    calibration = card["calibration"]  # fitted on the kept epoch's validation logits, applied by the Predictor
    assert calibration["temperature"] > 0 and calibration["val_nll_calibrated"] <= calibration["val_nll"] + 1e-9
    assert Predictor(trained.artifact_uri, device="cpu").temperature == calibration["temperature"]
    # Open world: statistics from the training photos, a threshold that 95% of the validation photos pass
    # (fitted by Ray Data actors; the Predictor here scores them alike).
    open_world = card["open_world"]
    assert open_world["score"] == "mahalanobis" and open_world["threshold"] > 0
    assert open_world["statistics_from"] == f"{card['data']['num_train']} training photos"
    prediction, _ = validation_prediction(trained.artifact_uri, demo_tree)
    scores = np.sort(prediction.scores["mahalanobis"])
    assert np.mean(prediction.unknown) <= 0.05 + 1e-9  # at most 1 of the 20 validation photos
    assert scores[int(0.95 * len(scores)) - 1] >= open_world["threshold"] / 1.02  # and no looser than that
    assert (
        card["training"]["num_workers"] == 2
        and card["training"]["image_size"] == 64
        and card["training"]["copies"] == copies
    )
    assert card["training"]["decoded_once"] is (cache_decoded is None)
    assert card["preprocessing"]["image_size"] == (test_size or 64)  # what inference feeds the model
    assert card["data"]["num_val"] == 20 and card["data"]["class_counts"]["dog"] == 12
    assert (
        sum(h["num_train_images"] for h in trained.history) == epochs * (card["data"]["num_train"])
    )  # photos, not copies
    history = json.loads((tmp_path / "run" / model_name / "history.json").read_text())
    assert {
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_macro_precision",
        "val_macro_recall",
        "lr",
        "images_per_second",
    } <= set(history[0])
    if model_name == "efficientnet_lite0":
        assert [h["phase"] for h in history] == ["head", "head", "fine_tune", "fine_tune"]
        assert history[-1]["lr"] < history[0]["lr"]


def test_bad_photos_are_skipped_named_and_counted(ray_session, tmp_path):
    import shutil

    from animals10.demo import write_demo_data

    data = write_demo_data(tmp_path / "data", images_per_class=4, seed=3)
    (data / "cane" / "zero.jpg").write_bytes(b"")
    (data / "gatto" / "text.jpg").write_text("not a photo")
    truncated = (data / "mucca" / "mucca_0000.jpg").read_bytes()
    (data / "mucca" / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    [trained] = train_models(
        TrainConfig(data=str(data), output=str(tmp_path / "run"), models=("custom_cnn",), epochs=1, image_size=32)
    )
    card = json.loads((tmp_path / "run" / "custom_cnn" / "model_card.json").read_text())
    assert card["data"]["num_skipped"] == 3
    assert sorted(Path(p).name for p in card["data"]["skipped_files"]) == ["text.jpg", "truncated.jpg", "zero.jpg"]
    assert trained.history[0]["num_train_images"] + trained.history[0]["num_val_images"] == 40
    shutil.rmtree(tmp_path / "run")


def test_a_restarted_run_resumes_from_its_latest_checkpoint(ray_session, demo_tree, tmp_path):
    config = TrainConfig(
        data=str(demo_tree), output=str(tmp_path / "run"), models=("custom_cnn",), epochs=2, image_size=32
    )
    [first] = train_models(config)
    # The same run started again (same output) with more epochs to go continues at epoch 3.
    [second] = train_models(config.with_overrides(epochs=4))
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    assert second.history[:2] == first.history
    card = json.loads((tmp_path / "run" / "custom_cnn" / "model_card.json").read_text())
    assert card["training"]["resumed_after_epochs"] == [2]
    checkpoints = sorted((tmp_path / "run" / "checkpoints" / "custom_cnn").glob("checkpoint_*"))
    assert 1 <= len(checkpoints) <= 3  # the best two and the latest are kept


def test_a_transfer_run_resumes_across_its_phase_switch(ray_session, demo_tree, tmp_path):
    """Stopped after the head-only phase, restarted: fine-tuning starts with its own optimizer."""
    config = TrainConfig(
        data=str(demo_tree), output=str(tmp_path / "run"), models=("efficientnet_lite0",), epochs=1, image_size=32
    )
    train_models(config)
    [resumed] = train_models(config.with_overrides(epochs=2))
    assert [(h["epoch"], h["phase"]) for h in resumed.history] == [(1, "head"), (2, "fine_tune")]
    assert resumed.history[1]["lr"] == pytest.approx(config.fine_tune_lr)


def test_keep_last_saves_the_final_epoch_and_frozen_batchnorm_keeps_imagenet_statistics(
    ray_session, demo_tree, tmp_path
):
    import torch

    from animals10.artifact import load_model
    from animals10.models import create_model

    config = TrainConfig(
        data=str(demo_tree), output=str(tmp_path / "run"), models=("efficientnet_lite0",), epochs=3, image_size=32,
        head_epochs_fraction=0.34, keep="last", freeze_batchnorm=True,
        fine_tune_lr=0.3,  # fine-tuning this fast spoils the model
    )  # fmt: skip
    [trained] = train_models(config)
    assert [h["phase"] for h in trained.history] == ["head", "fine_tune", "fine_tune"]
    assert trained.history[-1]["val_loss"] > min(
        h["val_loss"] for h in trained.history
    )  # not the best epoch: kept anyway
    assert trained.metrics["kept_epoch"] == 3 and trained.metrics["val_loss"] == trained.history[-1]["val_loss"]
    model = load_model(trained.artifact_uri, "cpu").model
    imagenet = create_model("efficientnet_lite0", 10, pretrained=True)
    trained_bn, imagenet_bn = (dict(m.backbone.named_buffers()) for m in (model, imagenet))
    assert all(torch.equal(trained_bn[k], imagenet_bn[k]) for k in imagenet_bn if "running" in k)
    trained_weights, imagenet_weights = (dict(m.backbone.named_parameters()) for m in (model, imagenet))
    assert not torch.equal(trained_weights["conv_head.weight"], imagenet_weights["conv_head.weight"])  # fine-tuned


def test_train_job_script_writes_both_artifacts_and_the_table(ray_session, demo_tree, tmp_path):
    from animals10.artifact import load_model
    from animals10.models.custom_cnn import ScatteringStem

    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    command = [
        sys.executable, "jobs/train.py", "--data", str(demo_tree), "--model", "custom_cnn",
        "--model", "efficientnet_lite0", "--epochs", "1", "--image-size", "32", "--output", str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("custom_cnn", "efficientnet_lite0"):
        assert (tmp_path / "run" / name / "model.safetensors").is_file()
        assert (tmp_path / "run" / name / "history.csv").read_text().startswith("train_loss,")
    card = json.loads((tmp_path / "run" / "custom_cnn" / "model_card.json").read_text())
    assert card["model_kwargs"] == {"scattering": 8}  # best's fixed first block: loading builds it again
    assert isinstance(load_model(str(tmp_path / "run" / "custom_cnn"), "cpu").model.features[0], ScatteringStem)
    table = done.stdout
    assert "Accuracy" in table and "Precision" in table and "Recall" in table
    assert "custom_cnn" in table and "efficientnet_lite0" in table


@dataclass(frozen=True)
class ConfigWithANewOption(TrainConfig):
    """TrainConfig as it is once someone adds an option to it (at module level: the task must pickle)."""

    new_option: str = "its default"


def test_the_worker_receives_the_configuration_resolved_for_its_model_whole():
    """What the driver hands Ray Train for a model's workers holds the configuration `for_model` resolves,
    as it is: a new option reaches the workers without a line that copies it."""
    from animals10.data import LabelledTree
    from animals10.labels import ANIMALS10_CLASSES
    from animals10.training.driver import worker_task

    config = ConfigWithANewOption(recipe="best", **RECIPES["best"], new_option="given").with_overrides(
        data="d", lr=0.02, use_gpu=False
    )
    paths = [f"d/{name}/{i}.jpg" for name in ANIMALS10_CLASSES for i in range(3)]
    tree = LabelledTree("d", paths, [i // 3 for i in range(len(paths))], list(ANIMALS10_CLASSES))
    task = worker_task(config, "custom_cnn", tree, list(range(0, 30, 2)), initial_state="the initial weights")

    assert isinstance(task, WorkerTask) and task.model_name == "custom_cnn"
    assert task.config == config.for_model("custom_cnn")  # every field, resolved for the model
    assert type(task.config) is ConfigWithANewOption and task.config.new_option == "given"
    # Resolved: the recipe's per-model values and the explicit value, not the recipe-wide ones.
    assert (task.config.image_size, task.config.epochs, task.config.lr, task.config.copies) == (64, 120, 0.02, 4)
    assert task.class_names == ANIMALS10_CLASSES and len(task.class_weights) == 10  # best weights the loss
    assert task.initial_state == "the initial weights"
    # Nothing of the configuration is copied beside it into the task, and the task arrives whole after
    # the pickling that hands it to the workers.
    assert not {f.name for f in fields(WorkerTask)} & {f.name for f in fields(TrainConfig)}
    assert pickle.loads(pickle.dumps(task)) == task
