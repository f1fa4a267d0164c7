"""Evaluation and the comparison report: metrics against hand-computed values, the report's files and
pictures, Parquet scoring against folder scoring, and one-sentence errors for bad input. No Ray."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing
from animals10.cli import main
from animals10.data import read_labelled_tree, split_indices
from animals10.errors import ArtifactError, DataError
from animals10.evaluate import evaluate_model, evaluation_metrics
from animals10.imaging import load_array
from animals10.models import create_model
from animals10.report import (
    WRONG_COLOUR,
    choose_samples,
    plot_sample_grid,
    sample_grid_pixels,
    write_report,
)
from animals10.transforms import to_model_input

IMAGE_SIZE = 48
VAL_FRACTION = 0.25
SPLIT_SEED = 7
TINY_CNN = {"widths": [8, 16, 32], "hidden": 32, "dropout": 0.0}


def _history(phases: list[tuple[str, int, float]]) -> list[dict]:
    """Per-epoch records shaped like training's history.json, with falling losses."""
    rows, epoch = [], 0
    for phase, num_epochs, lr in phases:
        for _ in range(num_epochs):
            epoch += 1
            rows.append(
                {
                    "epoch": epoch,
                    "phase": phase,
                    "lr": lr,
                    "train_loss": 2.3 / epoch,
                    "train_accuracy": min(0.95, 0.1 * epoch + 0.1),
                    "val_loss": 2.4 / epoch + 0.1,
                    "val_accuracy": min(0.9, 0.09 * epoch + 0.1),
                    "val_macro_precision": 0.5,
                    "val_macro_recall": 0.5,
                    "images_per_second": 100.0 + epoch,
                }
            )
    return rows


def _save(
    model, uri: str, tree, history: list[dict] | None, data_record: bool = True, data_uri: str | None = None
) -> str:
    card = ModelCard(
        "custom_cnn", list(tree.class_names), Preprocessing(image_size=IMAGE_SIZE), model_kwargs=dict(TINY_CNN)
    )
    if data_record:
        card.data = {"data_uri": data_uri or str(tree.root), "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED}
    if history:
        # As training records it: the epoch with the lowest validation loss is the one kept.
        best = min(range(len(history)), key=lambda i: history[i]["val_loss"])
        card.metrics = {"kept_epoch": best + 1, **{k: v for k, v in history[best].items() if k != "epoch"}}
    extra = {"history.json": json.dumps(history).encode()} if history is not None else None
    save_artifact(model, card, uri, extra)
    return uri


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, demo_tree):
    """Two artifacts trained on the demo tree's training split: 'custom_cnn' (trained for a few hundred
    photo-steps, well above chance) and 'barely_trained' (two steps), each with a history.json."""
    tree = read_labelled_tree(str(demo_tree))
    train, _ = split_indices(tree, VAL_FRACTION, SPLIT_SEED)
    images = torch.as_tensor(np.stack([load_array(open(tree.paths[i], "rb").read(), IMAGE_SIZE) for i in train]))
    labels = torch.as_tensor([tree.labels[i] for i in train])
    x = to_model_input(images, Preprocessing(image_size=IMAGE_SIZE))
    root = tmp_path_factory.mktemp("runs")
    uris = {}
    for name, steps in (("custom_cnn", 60), ("barely_trained", 2)):
        torch.manual_seed(0)
        model = create_model("custom_cnn", len(tree.class_names), **TINY_CNN)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            batch = torch.randint(0, len(x), (32,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        history = (
            _history([("train", 4, 1e-2), ("train", 2, 1e-3)])
            if name == "custom_cnn"
            else _history([("head", 2, 1e-3), ("fine_tune", 3, 1e-4)])
        )
        uris[name] = _save(model, str(root / name), tree, history)
    return uris


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # decodes the whole file: a damaged PNG fails here
        return image.size


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


# --- metrics -------------------------------------------------------------------------------------------


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


# --- scoring -------------------------------------------------------------------------------------------


def test_default_scoring_uses_the_training_validation_split_and_beats_chance(artifacts, demo_tree):
    tree = read_labelled_tree(str(demo_tree))
    _, val = split_indices(tree, VAL_FRACTION, SPLIT_SEED)
    evaluation = evaluate_model(artifacts["custom_cnn"])
    assert sorted(evaluation.paths) == sorted(tree.paths[i] for i in val)
    assert evaluation.metrics["num_images"] == len(val) and not evaluation.skipped
    assert evaluation.metrics["accuracy"] > 0.3  # ten classes: chance is 0.1
    assert evaluation.metrics["top3_accuracy"] >= evaluation.metrics["accuracy"]


def test_bad_photos_are_skipped_and_counted(artifacts, demo_tree, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_tree, data)
    (data / "gatto" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (data / "cane" / "empty.jpg").write_bytes(b"")
    evaluation = evaluate_model(artifacts["custom_cnn"], str(data), batch_size=16)
    assert evaluation.metrics["num_images"] == len(read_labelled_tree(str(demo_tree)).paths)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in evaluation.skipped) == ["broken.jpg", "empty.jpg"]


def test_scoring_a_parquet_output_gives_the_same_numbers_as_scoring_the_folder(artifacts, demo_tree, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from animals10.labels import class_name_for_folder
    from animals10.predictor import Predictor

    uri = artifacts["custom_cnn"]
    tree = read_labelled_tree(str(demo_tree))
    predictor = Predictor(uri, top_k=3)
    photos = np.stack([load_array(open(path, "rb").read(), IMAGE_SIZE) for path in tree.paths])
    described = predictor.describe(predictor.predict_probabilities(photos))
    # The rows batch inference writes for a labelled folder.
    rows = [
        {
            "path": path,
            **row,
            "error": "",
            "model": predictor.model_id,
            "true_label": class_name_for_folder(path.split("/")[-2]),
        }
        for path, row in zip(tree.paths, described)
    ]
    rows.append(
        {
            "path": str(demo_tree / "cane" / "bad.jpg"),
            "label": None,
            "label_index": None,
            "confidence": None,
            "top_k": None,
            "error": "not_image: the file is not an image Pillow can read",
            "model": predictor.model_id,
            "true_label": "dog",
        }
    )
    output = tmp_path / "predictions"
    output.mkdir()
    half = len(rows) // 2  # a batch job writes several files
    pq.write_table(pa.Table.from_pylist(rows[:half]), output / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[half:]), output / "part-1.parquet")

    from_parquet = evaluate_model(uri, str(output))
    from_folder = evaluate_model(uri, str(demo_tree))
    assert from_parquet.metrics["num_images"] == from_folder.metrics["num_images"] == len(tree.paths)
    assert from_parquet.metrics["accuracy"] == pytest.approx(from_folder.metrics["accuracy"])
    assert from_parquet.metrics["top3_accuracy"] == pytest.approx(from_folder.metrics["top3_accuracy"])
    assert from_parquet.metrics["confusion_matrix"] == from_folder.metrics["confusion_matrix"]
    assert from_parquet.metrics["loss"] is None  # the Parquet holds only the top 3 probabilities
    assert len(from_parquet.skipped) == 1


def test_flip_tta_averages_the_photo_and_its_mirror(artifacts, demo_tree):
    from animals10.evaluate import predict_paths
    from animals10.predictor import Predictor

    predictor = Predictor(artifacts["custom_cnn"])
    path = read_labelled_tree(str(demo_tree)).paths[0]
    photo = np.array(load_array(open(path, "rb").read(), IMAGE_SIZE))  # writable, as torch wants
    expected = (
        predictor.predict_probabilities(photo[None])
        + predictor.predict_probabilities(np.ascontiguousarray(photo[None, :, ::-1]))
    ) / 2
    probabilities, kept, _ = predict_paths(Predictor(artifacts["custom_cnn"], tta=True), [path])
    assert kept == [0]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


# --- the report ----------------------------------------------------------------------------------------


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
    ]
    for name in ["report.md", "report.html", "metrics.json", *names]:
        assert (output / name).is_file(), name
    # Every PNG decodes, at the size its layout gives it (100 dpi).
    expected_sizes = {
        "per_class_f1.png": (1150, 480),
        "curves_custom_cnn.png": (1500, 440),
        "confusion_custom_cnn.png": (880, 840),
        "samples_custom_cnn.png": sample_grid_pixels(6),
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


def test_cli_writes_the_report_with_tta(artifacts, tmp_path, capsys):
    output = tmp_path / "cli-report"
    code = main(
        [
            "evaluate",
            "--model",
            artifacts["custom_cnn"],
            "--model",
            artifacts["barely_trained"],
            "--output",
            str(output),
            "--samples",
            "4",
            "--batch-size",
            "8",
            "--tta",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert f"Report written to {output / 'report.html'}" in out
    assert "The best model is custom_cnn" in out
    assert json.loads((output / "metrics.json").read_text())["models"][0]["tta"] is True
    assert _png_size(output / "samples_custom_cnn.png") == sample_grid_pixels(4)


# --- bad input -----------------------------------------------------------------------------------------


def _cli_error(capsys, *args) -> tuple[int, str]:
    code = main(["evaluate", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_classes_that_differ_from_the_data_are_one_sentence(artifacts, tmp_path, capsys):
    data = tmp_path / "fruit"
    for folder in ("apple", "banana"):
        (data / folder).mkdir(parents=True)
        Image.new("RGB", (60, 60), (200, 30, 30)).save(data / folder / "1.jpg")
    with pytest.raises(DataError) as error:
        evaluate_model(artifacts["custom_cnn"], str(data))
    message = str(error.value)
    assert _one_sentence(message) and "apple" in message and "dog" in message
    code, err = _cli_error(
        capsys, "--model", artifacts["custom_cnn"], "--data", str(data), "--output", str(tmp_path / "out")
    )
    assert code != 0 and err == f"error: {message}"
    assert not (tmp_path / "out" / "report.html").exists()


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


def test_an_artifact_without_its_training_data_asks_for_data(demo_tree, tmp_path, capsys):
    tree = read_labelled_tree(str(demo_tree))
    model = create_model("custom_cnn", len(tree.class_names), **TINY_CNN)
    history = _history([("train", 2, 1e-3)])
    no_record = _save(model, str(tmp_path / "no-record"), tree, history, data_record=False)
    moved = _save(model, str(tmp_path / "moved"), tree, history, data_uri=str(tmp_path / "moved-away"))
    for uri in (no_record, moved):
        code, err = _cli_error(capsys, "--model", uri, "--output", str(tmp_path / "out"))
        assert (
            code != 0
            and err.startswith(f"error: '{uri}'" if uri == moved else "error: ")
            and "--data" in err
            and "\n" not in err
        )


def test_a_parquet_output_without_true_labels_is_one_sentence(artifacts, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    output = tmp_path / "unlabelled"
    output.mkdir()
    pq.write_table(
        pa.Table.from_pylist([{"path": "a.jpg", "label": "dog", "label_index": 0, "confidence": 0.9, "error": None}]),
        output / "part-0.parquet",
    )
    with pytest.raises(DataError) as error:
        evaluate_model(artifacts["custom_cnn"], str(output))
    assert _one_sentence(str(error.value)) and "true_label" in str(error.value)
