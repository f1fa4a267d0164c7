"""Scoring a model (animals10.evaluation): the training validation split by default, bad photos skipped and
counted, a Parquet output scored like its folder, flip TTA, and one-sentence errors for bad input. No Ray."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from animals10.card import Preprocessing
from animals10.data import read_labelled_tree, split_indices
from animals10.errors import DataError
from animals10.evaluation import evaluate_model
from animals10.imaging import load_array
from tests.scoring_helpers import IMAGE_SIZE, SPLIT_SEED, VAL_FRACTION, _cli_error, _one_sentence


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
    photos = np.stack([load_array(open(path, "rb").read(), Preprocessing(IMAGE_SIZE)) for path in tree.paths])
    described = predictor.describe(predictor.predict(photos))
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
    from animals10.evaluation.scoring import predict_paths
    from animals10.predictor import Predictor

    predictor = Predictor(artifacts["custom_cnn"])
    path = read_labelled_tree(str(demo_tree)).paths[0]
    photo = np.array(load_array(open(path, "rb").read(), Preprocessing(IMAGE_SIZE)))  # writable, as torch wants
    expected = (
        predictor.predict_probabilities(photo[None])
        + predictor.predict_probabilities(np.ascontiguousarray(photo[None, :, ::-1]))
    ) / 2
    prediction, kept, _ = predict_paths(Predictor(artifacts["custom_cnn"], tta=True), [path])
    assert kept == [0]
    np.testing.assert_allclose(prediction.probabilities, expected, rtol=1e-5, atol=1e-6)


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
