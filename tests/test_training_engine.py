"""The training step in plain PyTorch (animals10.training.engine): with TrivialAugment and MixUp/CutMix it
learns, and `copies` trains on each photo augmented several ways."""

import numpy as np
import pytest
import torch

from animals10.models import create_model
from animals10.training.config import recipe_config
from animals10.transforms import Augmentation


def test_training_step_with_mixing_and_trivial_augment_learns():
    """The training step with TrivialAugment and MixUp/CutMix drives the loss down on a learnable task."""
    from animals10.card import Preprocessing
    from animals10.training.engine import train_one_epoch

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
    from animals10.training.engine import train_one_epoch

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
