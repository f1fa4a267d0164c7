"""Batched augmentation (animals10.transforms): the strong recipe's, grey photos, crops, TrivialAugment,
MixUp and CutMix, and photos decoded larger than the model's input."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from animals10.training.config import RECIPES
from animals10.transforms import Augmentation, augment, mix_batch, trivial_augment


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
