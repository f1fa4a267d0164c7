"""Exported models give the Predictor's answers outside Ray and outside torch: ONNX run with onnxruntime,
TorchScript run with torch.jit, on demo photos decoded as the batch job decodes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing, read_card
from animals10.cli.main import main
from animals10.imaging import load_array
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import create_model, folder_name, get_model_spec, list_models, registry
from animals10.predictor import Predictor

# Per architecture: constructor values and input size, as recipes train them (custom_cnn: best's; a
# timm model: its pretrained_cfg's, 160 px centre crops for timm's tiny ViT).
SETTINGS = {
    "custom_cnn": ({"scattering": 8}, 72),
    "efficientnet_lite0": ({}, 96),
    "mobilenet_v2": ({}, 96),
    "timm:test_vit": ({}, 160),
}


def random_artifact(root, name: str) -> str:
    kwargs, size = SETTINGS[name]
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = create_model(name, len(ANIMALS10_CLASSES), pretrained=False, **kwargs)
    preprocessing = Preprocessing(size, spec.mean, spec.std, spec.interpolation, spec.crop_fraction)
    card = ModelCard(
        name, list(ANIMALS10_CLASSES), preprocessing, model_kwargs=kwargs, calibration={"temperature": 1.7}
    )
    uri = str(root / folder_name(name))
    save_artifact(model, card, uri)
    return uri


def demo_photos(demo_tree, preprocessing: Preprocessing, count: int = 6) -> np.ndarray:
    paths = sorted(demo_tree.glob("*/*.jpg"))[::17][:count]
    return np.stack([load_array(path.read_bytes(), preprocessing) for path in paths])


@pytest.mark.parametrize("name", [*list_models(), "timm:test_vit"])
def test_onnx_export_gives_the_predictors_probabilities(name, tmp_path, demo_tree, capsys):
    import onnxruntime

    uri = random_artifact(tmp_path, name)
    assert main(["export", "--model", uri]) == 0
    assert f"{uri}/model.onnx" in capsys.readouterr().out
    description = json.loads(Path(f"{uri}/model.onnx.json").read_text())
    size = SETTINGS[name][1]
    assert description["class_names"] == list(ANIMALS10_CLASSES) and description["input"]["shape"][1:] == [
        size,
        size,
        3,
    ]

    photos = demo_photos(demo_tree, read_card(uri).preprocessing)
    expected = Predictor(uri, device="cpu", mixed_precision=False).predict_probabilities(photos)
    session = onnxruntime.InferenceSession(f"{uri}/model.onnx", providers=["CPUExecutionProvider"])
    for batch in (photos[:1], photos):  # any batch size
        (probabilities,) = session.run(None, {"images": batch})
        np.testing.assert_allclose(probabilities, expected[: len(batch)], atol=1e-4)
        assert (probabilities.argmax(1) == expected[: len(batch)].argmax(1)).all()


def test_torchscript_export_gives_the_predictors_probabilities(tmp_path, demo_tree):
    uri = random_artifact(tmp_path, "custom_cnn")
    output = tmp_path / "cnn.pt"
    assert main(["export", "--model", uri, "--format", "torchscript", "--output", str(output)]) == 0
    photos = demo_photos(demo_tree, read_card(uri).preprocessing)
    expected = Predictor(uri, device="cpu", mixed_precision=False).predict_probabilities(photos)
    network = torch.jit.load(str(output))
    with torch.inference_mode():
        np.testing.assert_allclose(network(torch.from_numpy(photos)).numpy(), expected, atol=1e-5)
    assert json.loads(output.with_name("cnn.pt.json").read_text())["model_card"]["architecture"] == "custom_cnn"


def test_exporting_what_is_not_an_artifact_is_one_sentence(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a model artifact" in err and err.count("\n") == 1


class DataDependent(nn.Module):
    """A model whose control flow depends on the pixels: no static graph can hold it."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return self.linear(pooled) if pooled.sum() > 0 else -self.linear(pooled)


def test_an_architecture_that_cannot_be_exported_is_one_sentence_saying_why(tmp_path, capsys, monkeypatch):
    spec = registry.ModelSpec("data_dependent", lambda num_classes, **_: DataDependent(num_classes), (0.0,) * 3,
                              (1.0,) * 3, default_epochs=1, transfer=False)  # fmt: skip
    monkeypatch.setitem(registry._REGISTRY, "data_dependent", spec)
    uri = str(tmp_path / "data_dependent")
    save_artifact(DataDependent(10), ModelCard("data_dependent", list(ANIMALS10_CLASSES), Preprocessing(32)), uri)
    assert main(["export", "--model", uri]) == 2
    err = capsys.readouterr().err
    assert "data_dependent model" in err and "cannot be exported to onnx" in err and "data-dependent" in err
    assert err.count("\n") == 1 and not Path(f"{uri}/model.onnx").exists()
