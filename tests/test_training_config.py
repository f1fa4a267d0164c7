"""Training configuration (animals10.training.config): the recipes, their per-model values, how values
given on the command line combine with them, and the resolved configuration as the model card keeps it."""

from dataclasses import replace

import pytest

from animals10.training.config import RECIPES, TrainConfig, recipe_config
from animals10.transforms import Augmentation


def test_study_recipe_is_the_studys_settings():
    study = recipe_config("study", data="d")
    assert (study.optimizer, study.lr, study.batch_size, study.schedule, study.image_size) == (
        "adam",
        1e-3,
        32,
        "plateau",
        128,
    )
    assert study.for_model("custom_cnn").epochs == 30 and study.for_model("mobilenet_v2").epochs == 20
    assert study.augmentation == Augmentation()


def test_best_recipe_per_model_and_overrides():
    best = recipe_config("best", data="d", lr=5e-4, epochs=None)
    assert best.epochs is None and best.class_weighting  # None leaves the recipe's value
    cnn, transfer = best.for_model("custom_cnn"), best.for_model("efficientnet_lite0")
    assert (cnn.image_size, cnn.epochs, cnn.batch_size, cnn.early_stopping_patience, cnn.copies) == (64, 120, 16, 0, 4)
    assert transfer.copies == 1 and recipe_config("study").for_model("custom_cnn").copies == 1
    assert (
        cnn.augmentation.grayscale == transfer.augmentation.grayscale == 0.0
    )  # grey photos: an option, off by default
    assert cnn.augmentation.crop_scale == transfer.augmentation.crop_scale == (0.35, 1.0)
    assert (transfer.image_size, transfer.epochs, transfer.batch_size) == (224, 20, 32)
    assert cnn.lr == transfer.lr == 5e-4  # the command line wins over the recipe's per-model values
    given = recipe_config("best", data="d", image_size=96, epochs=3).for_model("custom_cnn")
    assert (given.image_size, given.epochs, given.batch_size) == (96, 3, 16)
    assert (cnn.keep, transfer.keep, transfer.freeze_batchnorm, transfer.head_epochs_fraction) == (
        "last",
        "last",
        True,
        0.3,
    )
    assert recipe_config("study").keep == "best_val_loss" and not recipe_config("study").freeze_batchnorm
    assert transfer.imagenet_head and not recipe_config("study").for_model("efficientnet_lite0").imagenet_head
    with pytest.raises(ValueError, match="Unknown keep 'best'"):
        recipe_config("best", keep="best")
    assert (cnn.augment_size, cnn.train_decode_size, transfer.train_decode_size) == (128, 128, 224)
    assert (
        recipe_config("best", image_size=224).for_model("custom_cnn").train_decode_size == 224
    )  # never below the input size
    with pytest.raises(ValueError, match="augment_size must be a positive"):
        recipe_config("best", augment_size=0)
    assert (cnn.test_size, cnn.inference_size, transfer.inference_size) == (72, 72, 224)
    assert recipe_config("study").for_model("custom_cnn").inference_size == 128  # the training size unless set
    assert recipe_config("best", image_size=96).for_model("custom_cnn").inference_size == 96  # not the recipe's 72
    assert recipe_config("best", image_size=96, test_size=112).for_model("custom_cnn").inference_size == 112
    with pytest.raises(ValueError, match="test_size must be a positive"):
        recipe_config("best", test_size=-8)
    assert set(RECIPES) == {"study", "best"}
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        recipe_config("fast")


def test_resolved_config_is_plain_data_for_the_model_card():
    import json

    resolved = recipe_config("best", data="d").for_model("custom_cnn")
    values = {k: v for k, v in resolved.to_dict().items() if k != "model_settings"}  # as the model card holds it
    assert json.loads(json.dumps(values))["augmentation"]["crop_scale"] == [0.35, 1.0]
    rebuilt = {**values, "augmentation": Augmentation.from_dict(values["augmentation"]),
               "models": tuple(values["models"]), "explicit": tuple(values["explicit"])}  # fmt: skip
    assert TrainConfig(**rebuilt) == replace(resolved, model_settings={})


def test_augmentation_given_on_the_command_line_goes_on_top_of_a_models_own():
    cnn_own = Augmentation(crop_scale=(0.35, 1.0), grayscale=0.2)
    config = TrainConfig(model_settings={"custom_cnn": {"augmentation": cnn_own}}).with_augmentation(
        mixup_alpha=0.2, trivial_augment=None
    )
    cnn, transfer = config.for_model("custom_cnn"), config.for_model("efficientnet_lite0")
    assert cnn.augmentation == replace(cnn_own, mixup_alpha=0.2)
    assert transfer.augmentation == Augmentation(mixup_alpha=0.2)
    assert config.with_augmentation(grayscale=0.0).for_model("custom_cnn").augmentation == replace(
        cnn_own, mixup_alpha=0.2, grayscale=0.0
    )


def test_values_combine_in_the_documented_precedence(monkeypatch):
    """The module docstring's order, lowest to highest: defaults < recipe < the recipe's per-model values <
    the command line < a model's default epochs (only where nothing sets epochs). A recipe of its own, so
    that each level's value can be told apart from the others'; built both from the command line and
    through recipe_config, for the from-scratch CNN and a transfer model."""
    import argparse

    from animals10.cli.train import add_train_arguments, config_from_args
    from animals10.models import get_model_spec

    cnn_augmentation = Augmentation(crop_scale=(0.5, 1.0), grayscale=0.2)
    layered = {
        "lr": 5e-3,
        "weight_decay": 0.05,
        "batch_size": 64,
        "image_size": 160,
        "augmentation": Augmentation(crop_scale=(0.35, 1.0)),
        "model_settings": {
            "custom_cnn": {
                "lr": 1e-3,
                "batch_size": 16,
                "image_size": 64,
                "test_size": 72,
                "epochs": 120,
                "augmentation": cnn_augmentation,
                "model_kwargs": {"scattering": 8},
            },
            "efficientnet_lite0": {"image_size": 224},
        },
    }
    monkeypatch.setitem(RECIPES, "layered", layered)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)  # after the recipe is registered: --recipe offers it

    def from_command_line(*options):
        return config_from_args(parser.parse_args(["--data", "d", "--recipe", "layered", *options]))

    # Without the command line: the recipe over the defaults, its per-model values over the recipe.
    cnn, transfer = (from_command_line().for_model(name) for name in ("custom_cnn", "efficientnet_lite0"))
    assert cnn.plateau_patience == transfer.plateau_patience == TrainConfig().plateau_patience == 2  # defaults
    assert cnn.weight_decay == transfer.weight_decay == 0.05  # the recipe's, not the default 0.0
    assert (cnn.lr, cnn.batch_size, cnn.image_size, cnn.inference_size) == (1e-3, 16, 64, 72)  # its own values
    assert (transfer.lr, transfer.batch_size, transfer.image_size, transfer.inference_size) == (5e-3, 64, 224, 224)
    assert cnn.augmentation == cnn_augmentation and transfer.augmentation == layered["augmentation"]
    assert cnn.model_kwargs == {"scattering": 8} and transfer.model_kwargs == {}
    # Epochs: the CNN's per-model 120; nothing sets the transfer model's, so its own default applies.
    assert cnn.epochs == 120 and transfer.epochs == get_model_spec("efficientnet_lite0").default_epochs == 20

    given = ["--batch-size", "8", "--image-size", "96", "--mixup", "0.2", "--scattering", "4"]
    built = {
        "command line": from_command_line(*given),
        "recipe_config": recipe_config("layered", data="d", batch_size=8, image_size=96)
        .with_augmentation(mixup_alpha=0.2)
        .with_model_settings("custom_cnn", model_kwargs={"scattering": 4}),
    }
    for how, config in built.items():
        cnn, transfer = config.for_model("custom_cnn"), config.for_model("efficientnet_lite0")
        # A value given explicitly wins over the recipe and over every model's own value.
        assert cnn.batch_size == transfer.batch_size == 8, how
        assert cnn.image_size == transfer.image_size == 96, how
        # The input size given is also the test size: the CNN's own test size of 72 no longer applies.
        assert cnn.test_size is None and cnn.inference_size == transfer.inference_size == 96, how
        # What is not given keeps its level: the CNN's own rate, the recipe's for the transfer model.
        assert (cnn.lr, transfer.lr, cnn.epochs, transfer.epochs) == (1e-3, 5e-3, 120, 20), how
        # Augmentation given goes on top of each model's own; a per-model value on top of the recipe's one.
        assert cnn.augmentation == replace(cnn_augmentation, mixup_alpha=0.2), how
        assert transfer.augmentation == replace(layered["augmentation"], mixup_alpha=0.2), how
        assert cnn.model_kwargs == {"scattering": 4} and transfer.model_kwargs == {}, how

    # Epochs and a test size given: every model's, over the per-model values and the models' defaults.
    both = from_command_line("--epochs", "3", "--image-size", "96", "--test-size", "112")
    cnn, transfer = both.for_model("custom_cnn"), both.for_model("efficientnet_lite0")
    assert cnn.epochs == transfer.epochs == 3
    assert (cnn.image_size, cnn.inference_size, transfer.inference_size) == (96, 112, 112)
