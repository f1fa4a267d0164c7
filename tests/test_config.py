"""Recipes and the batched augmentation they use."""

import pytest
import torch

from animals10.config import RECIPES, TrainConfig, recipe_config
from animals10.models import count_parameters, create_model
from animals10.transforms import Augmentation, augment


def test_study_recipe_is_the_studys_settings():
    study = recipe_config("study", data="d")
    assert (study.optimizer, study.lr, study.batch_size, study.schedule, study.image_size) == ("adam", 1e-3, 32, "plateau", 128)
    assert study.epochs_for("custom_cnn") == 30 and study.epochs_for("mobilenet_v2") == 20
    assert study.augmentation == Augmentation()


def test_best_recipe_and_overrides():
    best = recipe_config("best", data="d", lr=5e-4, epochs=None)
    assert best.lr == 5e-4 and best.epochs is None  # None leaves the recipe's value
    assert best.image_size_for("efficientnet_lite0") == 224 and best.image_size_for("custom_cnn") == 128
    assert best.model_kwargs["custom_cnn"] == {"residual": True} and best.class_weighting
    assert recipe_config("best", data="d", transfer_image_size=128).image_size_for("mobilenet_v2") == 128
    assert set(RECIPES) == {"study", "best"}
    with pytest.raises(ValueError, match="Unknown recipe 'fast'"):
        recipe_config("fast")


def test_resolved_config_is_plain_data_for_the_model_card():
    import json

    values = recipe_config("best", data="d").to_dict()
    assert json.loads(json.dumps(values))["augmentation"]["crop_scale"] == [0.35, 1.0]
    assert TrainConfig(**{**values, "augmentation": Augmentation.from_dict(values["augmentation"]), "models": tuple(values["models"])})


def test_residual_custom_cnn_trains():
    model = create_model("custom_cnn", 10, residual=True)
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    assert count_parameters(create_model("custom_cnn", 10)) < count_parameters(model) < 3_000_000


def test_strong_augmentation_changes_photos_but_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    strong = RECIPES["best"]["augmentation"]
    y = augment(x, strong)
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    assert (y - x).abs().mean() > 0.05
    identity = Augmentation(horizontal_flip=False, rotation_degrees=0.0, brightness=(1.0, 1.0))
    assert torch.equal(augment(x, identity), x)


def test_crop_zooms_in():
    """A random crop keeping a quarter of the area enlarges what it keeps: a bright centre square
    (1/16 of the photo) covers on average twice as much of the output or more."""
    torch.manual_seed(0)
    x = torch.zeros(16, 3, 64, 64)
    x[..., 24:40, 24:40] = 1.0
    crop = Augmentation(horizontal_flip=False, rotation_degrees=0.0, brightness=(1, 1), crop_scale=(0.25, 0.25))
    bright = (augment(x, crop) > 0.5).float().mean(dim=(1, 2, 3))
    assert bright.mean() > 2 / 16
