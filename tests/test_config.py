"""Recipes and the batched augmentation they use."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from animals10.config import RECIPES, TrainConfig, recipe_config
from animals10.models import count_parameters, create_model
from animals10.transforms import Augmentation, augment, mix_batch, trivial_augment


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
    rebuilt = {**values, "augmentation": Augmentation.from_dict(values["augmentation"]), "models": tuple(values["models"]),
               "explicit": tuple(values["explicit"])}  # fmt: skip
    assert TrainConfig(**rebuilt) == replace(resolved, model_settings={})


def test_command_line_builds_the_recipe_with_its_changes():
    import argparse

    from animals10.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(
        parser.parse_args(["--data", "d", "--mixup", "0.2", "--trivial-augment", "--batch-size", "8"])
    )
    cnn = config.for_model("custom_cnn")
    assert (
        cnn.augmentation.mixup_alpha == 0.2
        and cnn.augmentation.trivial_augment
        and cnn.augmentation.crop_scale == (0.35, 1.0)
    )
    assert cnn.batch_size == 8 and cnn.image_size == 64 and config.recipe == "best" and cnn.cache_decoded is None
    changed = config_from_args(
        parser.parse_args(
            [
                "--data",
                "d",
                "--keep",
                "best_val_loss",
                "--no-freeze-batchnorm",
                "--no-imagenet-head",
                "--no-cache-decoded",
            ]
        )
    )
    transfer = changed.for_model("efficientnet_lite0")
    assert (transfer.keep, transfer.freeze_batchnorm, transfer.imagenet_head, transfer.cache_decoded) == (
        "best_val_loss",
        False,
        False,
        False,
    )
    assert cnn.model_kwargs == {"scattering": 8} and config.for_model("efficientnet_lite0").model_kwargs == {}
    for given, kwargs in (("0", {}), ("4", {"scattering": 4})):
        scattering = config_from_args(parser.parse_args(["--data", "d", "--scattering", given]))
        assert (
            scattering.for_model("custom_cnn").model_kwargs == kwargs and scattering.for_model("custom_cnn").copies == 4
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--scattering", "2.5"])
    grey = config_from_args(parser.parse_args(["--data", "d", "--grayscale", "0.3"]))
    assert (
        grey.for_model("custom_cnn").augmentation.grayscale
        == grey.for_model("efficientnet_lite0").augmentation.grayscale
        == 0.3
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--data", "d", "--cutmix", "-1"])
    for wrong in ("1.5", "-0.1", "grey"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--grayscale", wrong])
    assert (
        config.val_fraction == 0.2
        and config_from_args(parser.parse_args(["--data", "d", "--val-fraction", "0.1"])).val_fraction == 0.1
    )
    for share in ("0", "1", "ten"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--val-fraction", share])
    with pytest.raises(ValueError, match="val_fraction must be above 0 and below 1"):
        recipe_config("best", val_fraction=0.0)


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


def test_grayscale_turns_about_its_share_of_photos_grey_and_leaves_the_rest():
    torch.manual_seed(0)
    x = torch.rand(400, 3, 8, 8)
    only_grey = Augmentation(horizontal_flip=False, rotation_degrees=0.0, brightness=(1.0, 1.0), grayscale=0.5)
    y = augment(x, only_grey)
    grey = (y[:, 0] == y[:, 1]).all(dim=(1, 2)) & (y[:, 1] == y[:, 2]).all(dim=(1, 2))
    assert 140 < int(grey.sum()) < 260  # about half of 400
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    assert torch.allclose(y[grey, 0], luma[grey]) and torch.equal(y[~grey], x[~grey])
    assert (augment(x, replace(only_grey, grayscale=1.0)).std(dim=1) == 0).all()


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


def test_photos_decoded_larger_are_augmented_then_resized_to_the_model_size():
    from animals10.card import Preprocessing
    from animals10.transforms import to_model_input

    big = torch.zeros(2, 128, 128, 3, dtype=torch.uint8)
    big[:, :, 64:] = 255  # left half black, right half white
    x = to_model_input(
        big,
        Preprocessing(image_size=64),
        Augmentation(rotation_degrees=0.0, horizontal_flip=False, brightness=(1.0, 1.0)),
    )
    assert x.shape == (2, 3, 64, 64)
    assert x[:, :, :, :31].max() == 0 and x[:, :, :, 33:].min() == 1  # the same picture, at the model's size
    assert to_model_input(big, Preprocessing(image_size=128)).shape == (2, 3, 128, 128)


def test_crop_zooms_in():
    """A random crop keeping a quarter of the area enlarges what it keeps: a bright centre square
    (1/16 of the photo) covers on average twice as much of the output or more."""
    torch.manual_seed(0)
    x = torch.zeros(16, 3, 64, 64)
    x[..., 24:40, 24:40] = 1.0
    crop = Augmentation(horizontal_flip=False, rotation_degrees=0.0, brightness=(1, 1), crop_scale=(0.25, 0.25))
    bright = (augment(x, crop) > 0.5).float().mean(dim=(1, 2, 3))
    assert bright.mean() > 2 / 16


def test_trivial_augment_changes_each_photo_on_its_own():
    """Eight copies of one photo come out as several different photos, still uint8 of the same shape."""
    torch.manual_seed(0)
    photo = torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8)
    out = trivial_augment(photo.expand(8, -1, -1, -1))
    assert out.shape == (8, 3, 48, 48) and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) >= 3


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixing_blends_photos_and_labels_in_the_same_shares(kind):
    """Photo i is blended with photo B-1-i; its soft target holds each label's share of the pixels."""
    batch = 6
    x = torch.arange(batch, dtype=torch.float32).view(-1, 1, 1, 1).expand(batch, 3, 16, 16).contiguous()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    augmentation = Augmentation(mixup_alpha=1.0) if kind == "mixup" else Augmentation(cutmix_alpha=1.0)
    rng = np.random.default_rng(3)
    for _ in range(5):
        mixed, targets = mix_batch(x, labels, 10, augmentation, rng)
        assert targets.shape == (batch, 10) and torch.allclose(targets.sum(1), torch.ones(batch))
        for i in range(batch):
            own, partner = targets[i, labels[i]].item(), targets[i, labels[batch - 1 - i]].item()
            # photo i has value i everywhere, its partner B-1-i: the mean pixel tells the mix
            assert mixed[i].mean().item() == pytest.approx(own * i + partner * (batch - 1 - i), abs=1e-4)
        assert 0.0 < targets[0, 0] < 1.0 or kind == "cutmix"
    unmixed, hard = mix_batch(x, labels, 10, Augmentation(), rng)
    assert torch.equal(unmixed, x) and torch.equal(hard.argmax(1), labels)


def test_training_step_with_mixing_and_trivial_augment_learns():
    """The training step with TrivialAugment and MixUp/CutMix drives the loss down on a learnable task."""
    from animals10.card import Preprocessing
    from animals10.engine import train_one_epoch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = np.zeros((64, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, 64)
    images[labels == 1, :, :, 0] = 220  # class 1 is red
    images[labels == 0, :, :, 2] = 220  # class 0 is blue
    batches = [{"image": images[i:i + 16], "label": labels[i:i + 16], "path": np.array([""] * 16, dtype=object),
                "error": np.array([""] * 16, dtype=object)} for i in range(0, 64, 16)]  # fmt: skip
    model = create_model("custom_cnn", 2, widths=(8, 16), hidden=16, dropout=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    augmentation = Augmentation(trivial_augment=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    losses = [
        train_one_epoch(
            model, batches, optimizer, Preprocessing(32), augmentation, torch.device("cpu"), num_classes=2
        ).loss_sum
        / 64
        for _ in range(8)
    ]
    assert losses[-1] < 0.75 * losses[0]


def test_copies_train_on_each_photo_augmented_several_ways():
    """`copies=3`: every step sees each photo of its batch three times, each copy augmented its own way."""
    from animals10.card import Preprocessing
    from animals10.engine import train_one_epoch

    torch.manual_seed(0)
    photos = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    batches = [{"image": photos[i:i + 4], "label": np.arange(i, i + 4) % 2, "path": np.array([""] * 4, dtype=object),
                "error": np.array([""] * 4, dtype=object)} for i in (0, 4)]  # fmt: skip
    model = create_model("custom_cnn", 2, widths=(8, 16), hidden=16)
    seen = []
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    augmentation = Augmentation(crop_scale=(0.35, 1.0))
    totals = train_one_epoch(
        model, batches, optimizer, Preprocessing(32), augmentation, torch.device("cpu"), num_classes=2, copies=3
    )
    assert totals.num_images == 8 and [x.shape[0] for x in seen] == [12, 12]  # 8 photos, each seen three ways
    first_photo = seen[0][[0, 4, 8]]  # its three copies
    assert not torch.allclose(first_photo[0], first_photo[1]) and not torch.allclose(first_photo[1], first_photo[2])
    with pytest.raises(ValueError, match="copies must be at least 1"):
        recipe_config("best", copies=0)


def test_copies_on_the_command_line():
    import argparse

    from animals10.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--data", "d", "--copies", "2"]))
    assert config.for_model("custom_cnn").copies == 2 and config.for_model("efficientnet_lite0").copies == 2
    for wrong in ("0", "1.5", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--data", "d", "--copies", wrong])
