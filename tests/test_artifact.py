"""The artifact round trip: what training writes, every consumer loads identically."""

import json

import numpy as np
import pytest
import torch

from animals10.artifact import load_model, save_artifact
from animals10.card import ModelCard, Preprocessing, read_card
from animals10.errors import ArtifactError
from animals10.models import create_model
from animals10.predictor import Predictor


@pytest.mark.parametrize("name", ["custom_cnn", "efficientnet_lite0"])
def test_round_trip_gives_identical_predictions(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, 3).eval()
    card = ModelCard(name, ["a", "b", "c"], Preprocessing(64, (0.5,) * 3, (0.5,) * 3), metrics={"val_accuracy": 0.5})
    model_id = save_artifact(model, card, str(tmp_path / name))
    images = np.random.default_rng(0).integers(0, 255, (4, 64, 64, 3), dtype=np.uint8)

    predictor = Predictor(str(tmp_path / name), device="cpu")
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        expected = model(x).softmax(1).numpy()
    np.testing.assert_allclose(predictor.predict_probabilities(images), expected, rtol=1e-5, atol=1e-6)
    assert predictor.model_id == model_id and model_id.startswith(name)
    assert predictor.class_names == ["a", "b", "c"] and predictor.image_size == 64
    assert read_card(str(tmp_path / name)).metrics == {"val_accuracy": 0.5}
    assert {"torch", "python"} <= set(json.loads((tmp_path / name / "model_card.json").read_text())["versions"])


def test_missing_or_damaged_artifacts_are_one_sentence(tmp_path, untrained_artifact):
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_model(str(tmp_path / "nothing-here"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_card.json").write_text(
        (__import__("pathlib").Path(untrained_artifact) / "model_card.json").read_text()
    )
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ArtifactError, match="damaged"):
        load_model(str(broken))


def test_a_card_of_an_unknown_architecture_or_an_older_card_is_handled(tmp_path, untrained_artifact):
    import shutil

    unknown = tmp_path / "unknown"
    shutil.copytree(untrained_artifact, unknown)
    card = json.loads((unknown / "model_card.json").read_text())
    (unknown / "model_card.json").write_text(json.dumps({**card, "architecture": "resnet9000"}))
    with pytest.raises(ArtifactError, match="cannot be built: Unknown model 'resnet9000'"):
        load_model(str(unknown))

    older = tmp_path / "older"  # written before the card had interpolation and crop: squashed, bilinear
    shutil.copytree(untrained_artifact, older)
    preprocessing = {k: card["preprocessing"][k] for k in ("image_size", "mean", "std")}
    (older / "model_card.json").write_text(json.dumps({**card, "preprocessing": preprocessing}))
    stored = read_card(str(older)).preprocessing
    assert (stored.image_size, stored.interpolation, stored.crop_fraction) == (64, "bilinear", None)
