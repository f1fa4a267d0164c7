"""Temperature scaling (animals10.calibration): fitted from sums that workers add up, it makes an
over-confident model honest; the artifact keeps it and the Predictor applies it."""

import numpy as np
import pytest
import torch

from animals10.artifact import save_artifact
from animals10.calibration import calibration_metrics, calibration_sums
from animals10.card import ModelCard, Preprocessing, read_card
from animals10.labels import ANIMALS10_CLASSES
from animals10.models import create_model
from animals10.predictor import Predictor


def overconfident_logits(count: int = 800, scale: float = 6.0, seed: int = 0):
    """Logits that rank the true class first about half the time, scaled up: far too sure of themselves."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    logits = torch.randn(count, 10, generator=generator)
    logits[torch.arange(count), labels] += 1.5
    return logits * scale, labels


def test_the_fitted_temperature_lowers_validation_nll_and_ece_of_an_overconfident_model():
    logits, labels = overconfident_logits()
    metrics = calibration_metrics(calibration_sums(logits, labels))
    assert metrics["temperature"] > 2  # it softens
    assert metrics["nll_calibrated"] < 0.6 * metrics["nll"]
    assert metrics["ece_calibrated"] < 0.5 * metrics["ece"]
    # The NLL before is the plain cross-entropy; after, that of the logits divided by the temperature.
    assert metrics["nll"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    divided = torch.nn.functional.cross_entropy(logits / metrics["temperature"], labels).item()
    assert metrics["nll_calibrated"] == pytest.approx(divided, rel=1e-5)


def test_workers_sums_add_up_to_the_whole_splits():
    logits, labels = overconfident_logits(seed=1)
    whole = calibration_metrics(calibration_sums(logits, labels))
    parts = calibration_metrics(sum(calibration_sums(logits[i::3], labels[i::3]) for i in range(3)))
    assert parts == pytest.approx(whole, rel=1e-6)


def test_a_well_calibrated_model_keeps_a_temperature_near_one():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(4000, 10, generator=generator) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)  # drawn from its own beliefs
    assert 0.85 < calibration_metrics(calibration_sums(logits, labels))["temperature"] < 1.15


def test_the_artifact_keeps_the_temperature_and_the_predictor_applies_it(tmp_path):
    torch.manual_seed(0)
    model = create_model("custom_cnn", len(ANIMALS10_CLASSES)).eval()
    calibration = {"temperature": 2.5, "fitted_on": "validation"}
    uri = str(tmp_path / "calibrated")
    save_artifact(
        model, ModelCard("custom_cnn", list(ANIMALS10_CLASSES), Preprocessing(64), calibration=calibration), uri
    )
    assert read_card(uri).calibration == calibration
    images = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255))
    predictor = Predictor(uri, device="cpu")
    np.testing.assert_allclose(predictor.predict_probabilities(images), (logits / 2.5).softmax(1).numpy(), atol=1e-6)
