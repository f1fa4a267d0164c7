"""The predictor (animals10.predictor): top-k descriptions, and flip TTA."""

import numpy as np
import pytest

from animals10.predictor import Prediction, Predictor


def test_describe_gives_top_k(untrained_artifact):
    predictor = Predictor(untrained_artifact, top_k=3)
    result = predictor.describe(Prediction(np.array([[0.1, 0.6, 0.3, 0, 0, 0, 0, 0, 0, 0]])))[0]
    assert result["label"] == "horse" and result["label_index"] == 1 and result["confidence"] == pytest.approx(0.6)
    assert [t["label"] for t in result["top_k"]] == ["horse", "elephant", "dog"]


def test_flip_tta_averages_a_photo_and_its_mirror(untrained_artifact):
    images = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    plain = Predictor(untrained_artifact, device="cpu")
    expected = (plain.predict_probabilities(images) + plain.predict_probabilities(images[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(
        Predictor(untrained_artifact, device="cpu", tta=True).predict_probabilities(images), expected, atol=1e-6
    )
    assert not np.allclose(expected, plain.predict_probabilities(images), atol=1e-6)
