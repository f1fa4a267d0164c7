"""Exported models give the Predictor's answers outside Ray and outside torch: ONNX run with onnxruntime,
TorchScript run with torch.jit, on demo photos decoded as the batch job decodes them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing
from animals10.cli.main import main
from animals10.imaging import load_array
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import create_model, get_model_spec, list_models
from animals10.predictor import Predictor

# Per architecture: constructor values and input size, as recipes train them (custom_cnn: best's).
SETTINGS = {"custom_cnn": ({"scattering": 8}, 72), "efficientnet_lite0": ({}, 96), "mobilenet_v2": ({}, 96)}


def random_artifact(root, name: str) -> str:
    kwargs, size = SETTINGS[name]
    spec = get_model_spec(name)
    torch.manual_seed(0)
    model = create_model(name, len(ANIMALS10_CLASSES), pretrained=False, **kwargs)
    preprocessing = Preprocessing(size, spec.mean, spec.std)
    card = ModelCard(name, list(ANIMALS10_CLASSES), preprocessing, model_kwargs=kwargs)
    uri = str(root / name)
    save_artifact(model, card, uri)
    return uri


def demo_photos(demo_tree, size: int, count: int = 6) -> np.ndarray:
    paths = sorted(demo_tree.glob("*/*.jpg"))[::17][:count]
    return np.stack([load_array(path.read_bytes(), size) for path in paths])


@pytest.mark.parametrize("name", list_models())
def test_onnx_export_gives_the_predictors_probabilities(name, tmp_path, demo_tree, capsys):
    import onnxruntime

    uri = random_artifact(tmp_path, name)
    assert main(["export", "--model", uri]) == 0
    assert f"{uri}/model.onnx" in capsys.readouterr().out
    description = json.loads((tmp_path / name / "model.onnx.json").read_text())
    size = SETTINGS[name][1]
    assert description["class_names"] == list(ANIMALS10_CLASSES) and description["input"]["shape"][1:] == [
        size,
        size,
        3,
    ]

    photos = demo_photos(demo_tree, size)
    expected = Predictor(uri, device="cpu", mixed_precision=False).predict_probabilities(photos)
    session = onnxruntime.InferenceSession(str(tmp_path / name / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (photos[:1], photos):  # any batch size
        (probabilities,) = session.run(None, {"images": batch})
        np.testing.assert_allclose(probabilities, expected[: len(batch)], atol=1e-4)
        assert (probabilities.argmax(1) == expected[: len(batch)].argmax(1)).all()


def test_torchscript_export_gives_the_predictors_probabilities(tmp_path, demo_tree):
    uri = random_artifact(tmp_path, "custom_cnn")
    output = tmp_path / "cnn.pt"
    assert main(["export", "--model", uri, "--format", "torchscript", "--output", str(output)]) == 0
    photos = demo_photos(demo_tree, SETTINGS["custom_cnn"][1])
    expected = Predictor(uri, device="cpu", mixed_precision=False).predict_probabilities(photos)
    network = torch.jit.load(str(output))
    with torch.inference_mode():
        np.testing.assert_allclose(network(torch.from_numpy(photos)).numpy(), expected, atol=1e-5)
    assert json.loads(output.with_name("cnn.pt.json").read_text())["model_card"]["architecture"] == "custom_cnn"


def test_exporting_what_is_not_an_artifact_is_one_sentence(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a model artifact" in err and err.count("\n") == 1
