"""Evaluation metrics against hand-computed values, and zeros rather than NaN where nothing was scored."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from animals10.evaluation import evaluation_metrics


def test_metrics_equal_hand_computed_values_with_a_class_never_predicted():
    names = ["a", "b", "c", "d"]  # c is never predicted; d has no photos and is never predicted
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 0, 1]
    probabilities = np.array(
        [
            [0.7, 0.1, 0.1, 0.1],
            [0.6, 0.2, 0.1, 0.1],
            [0.2, 0.5, 0.2, 0.1],  # true a: ranked 2nd
            [0.1, 0.8, 0.05, 0.05],
            [0.5, 0.3, 0.1, 0.1],
            [0.3, 0.4, 0.1, 0.2],  # true c: ranked 4th, outside the top 3
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a division by zero would warn
        m = evaluation_metrics(y_true, y_pred, names, probabilities=probabilities)

    assert m["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 6)
    # precision a 2/3, b 1/3, c 0, d 0; recall a 2/3, b 1/2, c 0, d 0; F1 a 2/3, b 0.4, c 0, d 0
    assert m["per_class"]["a"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_precision"] == pytest.approx(1 / 4)
    assert m["macro_recall"] == pytest.approx(7 / 24)
    assert m["macro_f1"] == pytest.approx(4 / 15)
    assert m["weighted_precision"] == pytest.approx(4 / 9)  # (3 * 2/3 + 2 * 1/3) / 6
    assert m["weighted_recall"] == pytest.approx(1 / 2)
    assert m["weighted_f1"] == pytest.approx(7 / 15)  # (3 * 2/3 + 2 * 0.4) / 6
    assert m["top3_accuracy"] == pytest.approx(5 / 6)
    expected_loss = -(math.log(0.7) + math.log(0.6) + math.log(0.2) + math.log(0.8) + math.log(0.3) + math.log(0.1)) / 6
    assert m["loss"] == pytest.approx(expected_loss)
    # Three cells of one photo each; c -> b is all of c's photos, so it comes first.
    assert [(p["true"], p["predicted"], p["count"]) for p in m["most_confused"]] == [
        ("c", "b", 1),
        ("b", "a", 1),
        ("a", "b", 1),
    ]
    assert m["most_confused"][0]["share_of_true"] == 1.0


def test_metrics_of_no_photos_are_zero_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluation_metrics([], [], ["a", "b"], probabilities=np.zeros((0, 2)))
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["loss"] == 0.0 and m["top3_accuracy"] is None
