"""Photos that are none of the classes (animals10.open_world and its users): the statistics and scores,
the artifact round trip, embeddings in the batch output, `evaluate --unknown`, and the bad inputs."""

from __future__ import annotations

import io
import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from animals10 import storage
from animals10.batch.job import BatchConfig, classify_images
from animals10.card import read_card
from animals10.cli.main import main
from animals10.errors import SettingsError
from animals10.evaluation.scoring import predict_paths
from animals10.evaluation.sets import read_validation_set
from animals10.evaluation.unknown import auroc, coverage_accuracy, fpr_at_tpr
from animals10.open_world import (
    FeatureStatistics,
    feature_sums,
    read_open_world,
    score_histogram,
    threshold_at,
    write_statistics,
)
from animals10.predictor import Predictor
from animals10.training.open_world_fit import add_rows


def skimage_photos(folder: Path) -> Path:
    """Real photos that show none of the ten animals, from scikit-image's samples."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "coffee", "rocket", "rocket", "astronaut"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}-{len(list(folder.iterdir()))}.jpg")
    return folder


# --- the statistics and scores --------------------------------------------------------------------


def test_mahalanobis_from_worker_sums_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(400, 16)) + 3 * rng.normal(size=(1, 16)), np.arange(400) % 4
    features[labels == 1] += 2.0
    # Two workers' sums, added: the same statistics as one worker's.
    halves = feature_sums(features[:150], labels[:150], 4) + feature_sums(features[150:], labels[150:], 4)
    np.testing.assert_allclose(halves, feature_sums(features, labels, 4), rtol=1e-10)
    statistics = FeatureStatistics.from_sums(halves, 4, shrinkage=0.1)

    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    means = np.stack([x[labels == c].mean(0) for c in range(4)])
    centred = x - means[labels]
    covariance = centred.T @ centred / len(x)
    covariance = 0.9 * covariance + 0.1 * np.trace(covariance) / 16 * np.eye(16)
    precision = np.linalg.inv(covariance)
    queries = rng.normal(size=(5, 16))
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    expected = np.min([np.einsum("bd,de,be->b", q - m, precision, q - m) for m in means], axis=0)
    np.testing.assert_allclose(statistics.mahalanobis(torch.as_tensor(queries)).numpy(), expected, rtol=1e-4)


def test_the_threshold_lets_95_percent_of_the_scored_photos_pass():
    scores = np.random.default_rng(1).lognormal(3, 1, size=5000)
    threshold = threshold_at(score_histogram(scores[:2500]) + score_histogram(scores[2500:]))
    assert np.mean(scores <= threshold) == pytest.approx(0.95, abs=0.005)


def test_auroc_fpr_and_coverage_curve_on_known_cases():
    known, unknown = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.5, 0.6])
    assert auroc(known, unknown) == pytest.approx((3 + 4 + 4) / 12)
    assert auroc(known, known) == pytest.approx(0.5)  # ties count half
    assert fpr_at_tpr(np.arange(100.0), np.array([50.0, 94.0, 96.0, 200.0])) == pytest.approx(0.5)
    curve = coverage_accuracy(np.array([0.1, 0.9, 0.2, 0.8]), np.array([True, False, True, True]), points=4)
    assert curve == [[0.25, 1.0], [0.5, 1.0], [0.75, 1.0], [1.0, 0.75]]


# --- the artifact ------------------------------------------------------------------------------------


def test_the_artifact_keeps_temperature_statistics_and_threshold(untrained_artifact, tmp_path):
    card = read_card(untrained_artifact)
    world = read_open_world(untrained_artifact, card.open_world)
    copy = str(tmp_path / "copy")
    write_statistics(copy, world.statistics)
    again = read_open_world(copy, card.open_world)
    assert torch.equal(again.statistics.whitening, world.statistics.whitening)
    assert torch.equal(again.statistics.class_means, world.statistics.class_means)
    predictor = Predictor(untrained_artifact, device="cpu")
    assert predictor.temperature == card.calibration["temperature"] == 1.5
    assert predictor.open_world.threshold == card.open_world["threshold"]
    assert Predictor(untrained_artifact, device="cpu", unknown_threshold=0.0).open_world.threshold == 0.0
    assert Predictor(untrained_artifact, device="cpu", unknown=False).open_world is None


def test_the_unknown_flag_follows_the_threshold(untrained_artifact, demo_tree):
    photos = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in sorted(Path(demo_tree).rglob("*.jp*g"))[:8]]
    )
    nothing = Predictor(untrained_artifact, device="cpu", unknown_threshold=1e9).predict(photos)
    everything = Predictor(untrained_artifact, device="cpu", unknown_threshold=0.0).predict(photos)
    assert not nothing.unknown.any() and everything.unknown.all()
    np.testing.assert_allclose(nothing.probabilities, everything.probabilities)  # the label is kept


def test_tta_averages_the_probabilities_but_scores_the_photo_itself(untrained_artifact, demo_tree):
    photos = np.stack(
        [np.asarray(Image.open(p).convert("RGB").resize((64, 64))) for p in sorted(Path(demo_tree).rglob("*.jp*g"))[:8]]
    )
    plain = Predictor(untrained_artifact, device="cpu").predict(photos, embeddings=True)
    tta = Predictor(untrained_artifact, device="cpu", tta=True).predict(photos, embeddings=True)
    assert not np.allclose(plain.probabilities, tta.probabilities, atol=1e-6)
    # The threshold was fitted on single photos: TTA leaves the scores, flags and embeddings as they are.
    np.testing.assert_allclose(tta.unknown_score, plain.unknown_score, rtol=1e-5)
    np.testing.assert_array_equal(tta.unknown, plain.unknown)
    np.testing.assert_allclose(tta.embeddings, plain.embeddings, rtol=1e-5)


def test_blocks_whose_photos_all_failed_add_nothing():
    full = np.arange(4.0)
    rows = [{"sums": full.tobytes(), "photos": 3}, {"sums": np.zeros(0).tobytes(), "photos": 0}]
    rows.append({"sums": (2 * full).tobytes(), "photos": 2})
    total, photos = add_rows(rows)
    np.testing.assert_array_equal(total, 3 * full)
    assert photos == 5 and add_rows([rows[1]]) == (None, 0)


@pytest.mark.parametrize("threshold", [-1.0, float("nan"), float("inf")])
def test_a_threshold_outside_its_range_is_one_sentence(untrained_artifact, threshold):
    with pytest.raises(SettingsError, match="outside the mahalanobis score's range"):
        Predictor(untrained_artifact, device="cpu", unknown_threshold=threshold)


def test_an_older_artifact_works_as_before_and_says_so_once(artifacts, caplog):
    older = artifacts["barely_trained"]  # written without open-world statistics
    with caplog.at_level(logging.INFO, logger="animals10.predictor"):
        predictor = Predictor(older, device="cpu")
    assert predictor.open_world is None
    assert sum("no open-world statistics" in r.getMessage() for r in caplog.records) == 1
    result = predictor.describe(predictor.predict(np.zeros((1, 64, 64, 3), np.uint8)))[0]
    assert "unknown" not in result and result["label"]
    with pytest.raises(SettingsError, match="no open-world statistics"):
        Predictor(older, device="cpu", unknown_threshold=10.0)


# --- batch output: embeddings and the unknown columns ---------------------------------------------


def test_embeddings_have_the_model_width_and_equal_photos_equal_rows(
    ray_session, untrained_artifact, demo_tree, tmp_path, capsys
):
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = sorted(Path(demo_tree).rglob("*.jp*g"))[:5]
    for i, source in enumerate(sources):
        (photos / f"{i}.jpg").write_bytes(source.read_bytes())
    (photos / "copy-of-0.jpg").write_bytes(sources[0].read_bytes())
    output = str(tmp_path / "out")
    summary = classify_images(BatchConfig(untrained_artifact, str(photos), output, embeddings=True, progress=False))
    rows = {Path(r["path"]).name: r for r in read_rows(output)}
    assert summary.files_seen == 6 and summary.unknown == sum(r["unknown"] for r in rows.values())
    assert rows["0.jpg"]["unknown"] == rows["copy-of-0.jpg"]["unknown"]
    width = Predictor(untrained_artifact, device="cpu").embedding_width
    assert width == 256  # custom_cnn's last hidden layer
    assert all(len(r["embedding"]) == width for r in rows.values())
    assert rows["0.jpg"]["embedding"] == rows["copy-of-0.jpg"]["embedding"]
    assert rows["0.jpg"]["embedding"] != rows["1.jpg"]["embedding"]
    # The README's near-duplicate recipe, run as printed on this output, finds the copy.
    found = run_readme_snippet(output, capsys)
    assert any({Path(a).name, Path(b).name} == {"0.jpg", "copy-of-0.jpg"} for a, b, _ in found)


def run_readme_snippet(output: str, capsys) -> list[tuple[str, str, str]]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippet = readme.split("import numpy as np, pyarrow.dataset as ds", 1)[1].split("```", 1)[0]
    code = textwrap.dedent("  import numpy as np, pyarrow.dataset as ds" + snippet)
    code = code.replace('"predictions/"', repr(output))
    capsys.readouterr()
    exec(compile(code, "README snippet", "exec"), {})
    return [tuple(line.split(" ")) for line in capsys.readouterr().out.splitlines()]


def test_no_unknown_leaves_the_columns_out(ray_session, untrained_artifact, demo_tree, tmp_path):
    output = str(tmp_path / "out")
    summary = classify_images(
        BatchConfig(untrained_artifact, str(demo_tree / "cane"), output, unknown=False, progress=False)
    )
    rows = read_rows(output)
    assert summary.unknown is None and rows and "unknown" not in rows[0] and "embedding" not in rows[0]


def read_rows(output: str) -> list[dict]:
    rows = []
    for uri in storage.list_files(output, (".parquet",)):
        rows += pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
    return rows


def test_infer_refuses_a_threshold_outside_its_range_before_starting(untrained_artifact, demo_tree, tmp_path, capsys):
    code = main(
        ["infer", "--model", untrained_artifact, "--input", str(demo_tree), "--output", str(tmp_path / "o")]
        + ["--unknown-threshold", "-3"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--unknown-threshold -3.0 is outside" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


# --- evaluate --unknown ---------------------------------------------------------------------------


def test_evaluate_with_unknown_photos_writes_the_figures_and_curves(artifacts, tmp_path, capsys):
    unknown = skimage_photos(tmp_path / "not-animals")
    output = tmp_path / "report"
    code = main(
        ["evaluate", "--model", artifacts["custom_cnn"], "--model", artifacts["barely_trained"]]
        + ["--unknown", str(unknown), "--output", str(output), "--samples", "0"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "unknown photos:" in out and "AUROC" in out
    models = {m["name"]: m for m in json.loads((output / "metrics.json").read_text())["models"]}
    world = models["custom_cnn"]["open_world"]
    assert world["num_unknown"] == 5 and world["unknown_source"] == str(unknown)
    # The figures are those of the scores the Predictor gives the same photos (its validation split
    # against the skimage photos), and these photos, real ones unlike the demo shapes, stand out somewhat.
    predictor = Predictor(artifacts["custom_cnn"], device="cpu")
    card = read_card(artifacts["custom_cnn"])
    known = predict_paths(predictor, read_validation_set(card, artifacts["custom_cnn"]).paths)[0].scores
    outside = predict_paths(predictor, sorted(str(p) for p in unknown.iterdir()))[0].scores
    assert set(world["per_score"]) == {"max_probability", "mahalanobis"}
    for name, figures in world["per_score"].items():
        assert figures["auroc"] == pytest.approx(auroc(known[name], outside[name]))
        assert figures["fpr_at_95_tpr"] == pytest.approx(fpr_at_tpr(known[name], outside[name]))
    assert world["per_score"]["mahalanobis"]["auroc"] > 0.5  # better than chance, even for this tiny model
    assert world["unknown_flagged"] == pytest.approx(np.mean(outside["mahalanobis"] > card.open_world["threshold"]))
    assert world["coverage_accuracy"][-1][1] == pytest.approx(models["custom_cnn"]["metrics"]["accuracy"])
    assert models["barely_trained"]["open_world"] is None  # an older artifact: left out, not an error
    report = (output / "report.md").read_text()
    assert "Photos that are none of the classes" in report and "AUROC" in report
    assert (output / "coverage_accuracy.png").stat().st_size > 0


def test_evaluate_refuses_an_empty_unknown_folder_and_one_of_known_classes(artifacts, demo_tree, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    spelled = os.path.relpath(demo_tree) if len(os.path.relpath(demo_tree)) < 200 else str(demo_tree)
    cases = [(empty, "holds no photos"), (demo_tree, "own classes"), (f"./{spelled}", "own classes")]
    for folder, wanted in cases:
        code = main(
            ["evaluate", "--model", artifacts["custom_cnn"], "--unknown", str(folder), "--output", str(tmp_path)]
        )
        err = capsys.readouterr().err
        assert code != 0 and wanted in err and "Traceback" not in err and err.count("\n") == 1
