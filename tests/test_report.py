"""The comparison report (animals10.report): its files and pictures, the best model and why, the sample
grid, and one-sentence errors for bad input. No Ray."""

from __future__ import annotations

import base64
import json
import re

import pytest

from animals10.errors import ArtifactError, DataError
from animals10.evaluation import evaluate_model
from animals10.report import write_report
from animals10.report.contents import choose_samples
from animals10.report.plots import WRONG_COLOUR, plot_sample_grid, sample_grid_pixels
from tests.scoring_helpers import _cli_error, _one_sentence, _png_size


def test_report_has_every_file_picture_and_names_the_best_model(artifacts, tmp_path):
    output = tmp_path / "report"
    report = write_report([artifacts["custom_cnn"], artifacts["barely_trained"]], str(output), samples=6)

    names = [
        "per_class_f1.png",
        "curves_custom_cnn.png",
        "curves_barely_trained.png",
        "confusion_custom_cnn.png",
        "confusion_barely_trained.png",
        "samples_custom_cnn.png",
        "samples_barely_trained.png",
        "reliability_custom_cnn.png",
        "reliability_barely_trained.png",
        "coverage_accuracy.png",  # custom_cnn has open-world statistics, barely_trained not
    ]
    for name in ["report.md", "report.html", "metrics.json", *names]:
        assert (output / name).is_file(), name
    # Every PNG decodes, at the size its layout gives it (100 dpi).
    expected_sizes = {
        "per_class_f1.png": (1150, 480),
        "curves_custom_cnn.png": (1500, 440),
        "confusion_custom_cnn.png": (880, 840),
        "samples_custom_cnn.png": sample_grid_pixels(6),
        "reliability_custom_cnn.png": (500, 460),
        "coverage_accuracy.png": (560, 420),
    }
    assert sample_grid_pixels(6) == (690, 590)  # 3 columns x 2 rows of photos
    for name in names:
        assert _png_size(output / name) == expected_sizes.get(name.replace("barely_trained", "custom_cnn"))

    # The HTML is self-contained: every picture embedded, byte for byte; no link to a file.
    page = (output / "report.html").read_text()
    embedded = [
        base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]
    assert len(embedded) == len(names)
    assert sorted(embedded) == sorted((output / name).read_bytes() for name in names)
    assert not re.search(r'src="(?!data:)', page)

    markdown = (output / "report.md").read_text()
    for name in names:
        assert f"]({name})" in markdown
    assert "| Accuracy |" in markdown and "| Loss (cross-entropy) |" in markdown and "| Top-3 accuracy |" in markdown

    # The trained model wins, and the reason quotes the numbers.
    trained, barely = report.evaluations
    assert trained.metrics["macro_f1"] > barely.metrics["macro_f1"]
    assert report.best_model == "custom_cnn"
    assert (
        f"{trained.metrics['macro_f1']:.3f}" in report.best_reason
        and f"{barely.metrics['macro_f1']:.3f}" in report.best_reason
    )
    assert report.best_reason in markdown
    summary = json.loads((output / "metrics.json").read_text())
    assert summary["best_model"] == "custom_cnn"
    assert summary["models"][0]["metrics"]["accuracy"] == pytest.approx(trained.metrics["accuracy"])


def test_sample_grid_shows_the_requested_number_of_photos_and_marks_mistakes(artifacts):
    evaluations = [evaluate_model(artifacts["custom_cnn"]), evaluate_model(artifacts["barely_trained"])]
    for count in (1, 5, 12):
        chosen = choose_samples(evaluations, count)
        assert chosen["custom_cnn"] == chosen["barely_trained"]  # the same photos for both models
        assert len(set(chosen["custom_cnn"])) == count
        for evaluation in evaluations:
            figure = plot_sample_grid(evaluation, chosen[evaluation.name], evaluation.name)
            shown = [ax for ax in figure.axes if ax.images]
            assert len(shown) == count
            wrong = sum(evaluation.y_true[i] != evaluation.y_pred[i] for i in chosen[evaluation.name])
            assert sum(ax.title.get_color() == WRONG_COLOUR for ax in shown) == wrong
            assert all(ax.title.get_text().startswith("True: ") and "\nPred: " in ax.title.get_text() for ax in shown)
    # More photos asked for than were scored: all of them, once.
    everything = choose_samples(evaluations, 10_000)["custom_cnn"]
    assert sorted(everything) == list(range(len(evaluations[0].paths)))


def test_missing_history_is_one_sentence(untrained_artifact, tmp_path, capsys):
    with pytest.raises(ArtifactError) as error:
        write_report([untrained_artifact], str(tmp_path / "out"))
    message = str(error.value)
    assert _one_sentence(message) and "history.json" in message and untrained_artifact in message
    code, err = _cli_error(capsys, "--model", untrained_artifact, "--output", str(tmp_path / "out"))
    assert code != 0 and err == f"error: {message}"


def test_empty_data_folder_is_one_sentence(artifacts, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as error:
        write_report([artifacts["custom_cnn"]], str(tmp_path / "out"), data=str(empty))
    message = str(error.value)
    assert _one_sentence(message) and str(empty) in message
    code, err = _cli_error(
        capsys, "--model", artifacts["custom_cnn"], "--data", str(empty), "--output", str(tmp_path / "out")
    )
    assert code != 0 and err == f"error: {message}"
