"""Every registered model trains; the pretrained weights are real and load without network."""

import numpy as np
import pytest
import torch

from animals10.errors import WeightsUnavailableError
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import count_parameters, create_model, list_models
from animals10.models.custom_cnn import ScatteringStem
from animals10.models.transfer import IMAGENET_CLASSES, MOBILENET_V2_CACHE_FILE, load_efficientnet_lite0_imagenet


@pytest.mark.parametrize("name", list_models())
def test_forward_and_backward(name):
    model = create_model(name, num_classes=10)
    x = torch.rand(2, 3, 96, 96)
    logits = model(x)
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert 100_000 < count_parameters(model) < 6_000_000


def test_custom_cnn_is_small():
    assert count_parameters(create_model("custom_cnn", 10)) < 1_000_000


def stripes(angle: float, period: float = 2 * np.pi / (3 * np.pi / 4), size: int = 32) -> torch.Tensor:
    """A (1, 3, size, size) grey photo of stripes whose brightness varies along `angle` (from the vertical)."""
    y, x = np.mgrid[:size, :size]
    along = y * np.cos(angle) + x * np.sin(angle)
    return torch.from_numpy(np.cos(2 * np.pi * along / period)).float().expand(1, 3, size, size).contiguous()


def test_scattering_stem_is_fixed_and_finds_the_orientation_of_edges():
    stem = ScatteringStem(orientations=8).eval()  # fresh statistics: BatchNorm passes its input through
    assert count_parameters(stem, trainable_only=True) == 0
    moduli = lambda photo: stem(photo)[0, 1:9, 4:-4, 4:-4].mean((1, 2))  # noqa: E731 (the red channel's 8 orientations)
    assert moduli(torch.full((1, 3, 32, 32), 0.7)).abs().max() < 1e-4  # a flat photo has no edges
    for k in range(8):  # stripes at each orientation excite that orientation's wavelet most
        angle = (8 // 2 - 1 - k) * np.pi / 8
        assert int(moduli(stripes(angle)).argmax()) == k


def test_custom_cnn_with_a_scattering_first_block_learns_only_the_later_blocks():
    model = create_model("custom_cnn", 10, scattering=8)
    stem, first_conv = model.features[0], model.features[1]
    assert isinstance(stem, ScatteringStem) and first_conv.in_channels == 3 * (1 + 8)
    logits = model(torch.rand(2, 3, 72, 72))
    logits.sum().backward()
    assert logits.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters()) and not list(stem.parameters())
    again = create_model("custom_cnn", 10, scattering=8)
    again.load_state_dict(model.state_dict())  # the fixed filters are rebuilt, not saved
    photos = torch.rand(2, 3, 72, 72)
    assert torch.equal(again.eval()(photos), model.eval()(photos))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_frozen_backbone_trains_only_the_head_and_keeps_batchnorm_statistics(name):
    model = create_model(name, num_classes=10)
    model.freeze_backbone()
    model.train()
    assert count_parameters(model, trainable_only=True) == 1280 * 10 + 10
    batchnorm = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorm and not any(m.training for m in batchnorm)
    before = batchnorm[0].running_mean.clone()
    model(torch.rand(4, 3, 64, 64))
    assert torch.equal(before, batchnorm[0].running_mean)
    stages = model.unfreeze_top(0.3)
    assert 0 < stages < len(model.stages)
    assert 1280 * 10 + 10 < count_parameters(model, trainable_only=True) < count_parameters(model)
    assert batchnorm[-1].training and not batchnorm[0].training


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_fine_tuning_with_frozen_batchnorm_trains_every_weight_but_keeps_the_statistics(name):
    model = create_model(name, num_classes=10)
    model.freeze_backbone()
    model.unfreeze_top(1.0)
    model.freeze_batchnorm()
    model.train()
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    batchnorm = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in batchnorm]
    model(torch.rand(4, 3, 64, 64)).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, batchnorm))
    assert all(m.weight.grad is not None for m in batchnorm)  # the scales and shifts still learn
    assert model.head[0].training  # dropout still active


def test_efficientnet_lite0_weights_are_imagenet_pretrained():
    """The untouched ImageNet head calls a real photo of a cat a cat (classes 281-285)."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    model = load_efficientnet_lite0_imagenet().eval()
    photo = np.array(Image.fromarray(skimage_data.chelsea()).resize((224, 224)))
    x = torch.from_numpy(photo).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]
    with torch.no_grad():
        top = model(x).softmax(1).argmax(1).item()
    assert 281 <= top <= 285


def test_imagenet_classes_of_each_animal_are_the_right_imagenet_classes():
    from torchvision.models import MobileNet_V2_Weights

    imagenet = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]  # the 1000 names in the usual order
    names = {animal: [imagenet[i] for i in indices] for animal, indices in IMAGENET_CLASSES.items()}
    assert sorted(names) == sorted(ANIMALS10_CLASSES)
    assert (len(names["dog"]), names["dog"][0], names["dog"][-1]) == (118, "Chihuahua", "Mexican hairless")
    assert names["cat"] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert (
        names["horse"] == ["sorrel", "horse cart"]
        and names["chicken"] == ["cock", "hen"]
        and names["squirrel"] == ["fox squirrel"]
    )
    assert names["elephant"] == ["tusker", "Indian elephant", "African elephant"]
    assert names["cow"] == ["ox", "water buffalo", "bison"] and names["sheep"] == ["ram", "bighorn"]
    assert names["butterfly"] == ["admiral", "ringlet", "monarch", "cabbage butterfly", "sulphur butterfly", "lycaenid"]
    assert (
        names["spider"][0] == "black and gold garden spider"
        and names["spider"][-1] == "wolf spider"
        and len(names["spider"]) == 6
    )


def test_head_started_from_imagenet_knows_a_cat_before_any_training():
    """A photo of a cat, through efficientnet_lite0 whose new ten-class head has not been trained at all."""
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = np.array(Image.fromarray(skimage_data.chelsea()).resize((224, 224)))
    x = torch.from_numpy(photo).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)[None]
    classes = list(reversed(ANIMALS10_CLASSES))  # any order: rows follow the names given
    started = create_model("efficientnet_lite0", len(classes), pretrained=True, head_classes=classes).eval()
    with torch.no_grad():
        probabilities = started(x).softmax(1)[0]
    assert classes[int(probabilities.argmax())] == "cat" and probabilities.max() > 0.5


def test_head_stays_random_when_imagenet_lacks_a_class(caplog):
    torch.manual_seed(0)
    random_start = create_model("efficientnet_lite0", 3, pretrained=True).head[-1].weight
    torch.manual_seed(0)
    with caplog.at_level("WARNING", logger="animals10.models.transfer"):
        model = create_model("efficientnet_lite0", 3, pretrained=True, head_classes=["cat", "dog", "unicorn"])
    assert torch.equal(model.head[-1].weight, random_start)
    assert "ImageNet has no class for unicorn" in caplog.text


def test_mobilenet_v2_loads_imagenet_weights_from_the_torch_cache(tmp_path, monkeypatch):
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / MOBILENET_V2_CACHE_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model("mobilenet_v2", 10, pretrained=True)
    assert torch.equal(model.backbone[0][0][0].weight, reference.features[0][0].weight)


def test_mobilenet_v2_loads_weights_from_a_file(tmp_path):
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None)
    torch.save(reference.state_dict(), tmp_path / "weights.pth")
    model = create_model("mobilenet_v2", 10, pretrained=True, weights_path=str(tmp_path / "weights.pth"))
    assert torch.equal(model.backbone[0][18][0].weight, reference.features[18][0].weight)


def test_mobilenet_v2_without_weights_or_network_says_how_to_supply_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="--weights PATH.*efficientnet_lite0"):
        create_model("mobilenet_v2", 10, pretrained=True)


def test_weights_files_with_pickled_code_are_refused(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(WeightsUnavailableError, match="cannot be loaded safely|not a PyTorch state dict"):
        create_model("custom_cnn", 10, weights_path=str(path))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown model 'resnet9000'.*custom_cnn"):
        create_model("resnet9000", 10)
