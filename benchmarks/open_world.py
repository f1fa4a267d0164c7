"""Calibration and "none of the classes" on real photos: does a confidence mean what it says, and do the
unknown scores tell the ten animals from everything else?

    .venv/bin/python benchmarks/open_world.py [--data ../shared/data/animals10-sample/raw-img] \
        [--known ../shared/data/bench-images] [--unknown ../shared/data/unknown-sample] \
        [--models efficientnet_lite0:best custom_cnn:study] [--seed 1] [--shrinkage 0.01 0.1 0.5] \
        [--results FILE]

Each model trains with its recipe through the function behind `animals10 train` (which fits the
temperature and the open-world statistics and threshold), on the 80/20 split of `--seed`. The saved
artifact is then scored with the package's Predictor: known photos are the validation split and the
photos of `--known` (a labelled tree whose classes are a subset of the ten); unknown photos are
`--unknown`'s `far/` (objects, places, food, people) and `near/` (other animals), apart. Printed per
model: validation ECE before (temperature 1) and after calibration, ECE on the known photos, and per
unknown score and per unknown set, AUROC and the false-positive rate at 95% true-positive rate, and the
share of each set the artifact's threshold flags. `--shrinkage A B ...` also refits the Mahalanobis
statistics from the training photos' embeddings with each shrinkage and scores them the same way
(the threshold again at 95% of the validation photos).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animals10 import storage
from animals10.calibration import expected_calibration_error, reliability_bins
from animals10.data import load_photo, read_labelled_tree, split_indices
from animals10.evaluation.scoring import predict_paths
from animals10.evaluation.unknown import auroc, fpr_at_tpr
from animals10.open_world import FeatureStatistics, feature_sums
from animals10.predictor import Predictor
from animals10.training.config import recipe_config
from animals10.training.driver import train_models


def ece(prediction, labels: np.ndarray) -> float:
    probabilities = prediction.probabilities
    return expected_calibration_error(reliability_bins(probabilities.max(1), probabilities.argmax(1) == labels))


def labelled(tree, indices, class_names: list[str]) -> tuple[list[str], np.ndarray]:
    """Paths and labels (the model's class indices) of `indices` of a labelled tree."""
    return [tree.paths[i] for i in indices], np.asarray(
        [class_names.index(tree.class_names[tree.labels[i]]) for i in indices]
    )


def score_model(
    artifact: str, val_paths, val_labels, known_paths, known_labels, unknown: dict, train: tuple, shrinkages
) -> dict:
    calibrated = Predictor(artifact, device="cpu")
    raw = Predictor(artifact, device="cpu")
    raw.temperature = 1.0
    figures: dict = {}
    val, kept, _ = predict_paths(calibrated, val_paths)
    val_raw, _, _ = predict_paths(raw, val_paths)
    figures["val_ece_raw"], figures["val_ece_calibrated"] = ece(val_raw, val_labels[kept]), ece(val, val_labels[kept])
    extra, kept_extra, _ = predict_paths(calibrated, known_paths)
    extra_raw, _, _ = predict_paths(raw, known_paths)
    figures["known_ece_raw"] = ece(extra_raw, known_labels[kept_extra])
    figures["known_ece_calibrated"] = ece(extra, known_labels[kept_extra])
    figures["known_accuracy"] = float(np.mean(extra.probabilities.argmax(1) == known_labels[kept_extra]))
    known = {name: np.concatenate([val.scores[name], extra.scores[name]]) for name in val.scores}
    world = calibrated.open_world
    figures["score"], figures["threshold"] = world.score, world.threshold
    figures["known_flagged"] = float(np.mean(known[world.score] > world.threshold))
    figures["val_flagged"] = float(np.mean(val.scores[world.score] > world.threshold))
    figures["held_out_flagged"] = float(np.mean(extra.scores[world.score] > world.threshold))
    unknown_predictions = {name: predict_paths(calibrated, paths)[0] for name, paths in unknown.items()}
    for set_name, prediction in unknown_predictions.items():
        figures[f"{set_name}_flagged"] = float(np.mean(prediction.scores[world.score] > world.threshold))
        for name in known:
            figures[f"{set_name}_{name}_auroc"] = auroc(known[name], prediction.scores[name])
            figures[f"{set_name}_{name}_fpr95"] = fpr_at_tpr(known[name], prediction.scores[name])
    if shrinkages:
        figures["shrinkage"] = shrinkage_table(calibrated, train, (val_paths, known_paths), unknown, shrinkages)
    return figures


def embeddings_of(predictor, paths) -> np.ndarray:
    """The embeddings of `paths`, in batches, as the Predictor computes them."""
    rows = []
    for start in range(0, len(paths), 64):
        images = [load_photo(p, predictor.preprocessing)[0] for p in paths[start : start + 64]]
        rows.append(predictor.predict(np.stack([i for i in images if i is not None]), embeddings=True).embeddings)
    return np.concatenate(rows)


def mahalanobis(statistics: FeatureStatistics, embeddings: np.ndarray) -> np.ndarray:
    return statistics.mahalanobis(torch.as_tensor(embeddings)).numpy()


def shrinkage_table(predictor, train: tuple, known: tuple, unknown: dict, shrinkages) -> dict:
    """Per shrinkage: the Mahalanobis statistics refitted on the training photos, then AUROC and FPR at
    95% TPR on far and near, and the share of held-out known photos over the validation threshold."""
    train_paths, train_labels = train
    features = embeddings_of(predictor, train_paths)
    val, held_out = (embeddings_of(predictor, paths) for paths in known)
    outside = {name: embeddings_of(predictor, paths) for name, paths in unknown.items()}
    table = {}
    for shrinkage in shrinkages:
        sums = feature_sums(features, train_labels, len(predictor.class_names))
        statistics = FeatureStatistics.from_sums(sums, len(predictor.class_names), shrinkage)
        score = functools.partial(mahalanobis, statistics)
        threshold = np.quantile(score(val), 0.95)
        known_scores = np.concatenate([score(val), score(held_out)])
        row = {"held_out_flagged": float(np.mean(score(held_out) > threshold))}
        for name, x in outside.items():
            row[f"{name}_auroc"] = auroc(known_scores, score(x))
            row[f"{name}_fpr95"] = fpr_at_tpr(known_scores, score(x))
        table[str(shrinkage)] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", default=str(shared / "animals10-sample" / "raw-img"))
    parser.add_argument("--known", default=str(shared / "bench-images"))
    parser.add_argument("--unknown", default=str(shared / "unknown-sample"))
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0:best", "custom_cnn:study"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shrinkage", type=float, nargs="*", default=[], help="Mahalanobis shrinkages to compare")
    parser.add_argument("--results", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    tree = read_labelled_tree(args.data)
    known_tree = read_labelled_tree(args.known)
    unknown = {
        name: sorted(storage.list_files(str(Path(args.unknown) / name), storage.IMAGE_EXTENSIONS))
        for name in ("far", "near")
    }
    train_idx, val_idx = split_indices(tree, 0.2, args.seed)
    results = []
    for entry in args.models:
        model, recipe = entry.split(":")
        with tempfile.TemporaryDirectory() as output:
            config = recipe_config(recipe, data=args.data, output=output, models=(model,), seed=args.seed)
            start = time.perf_counter()
            [trained] = train_models(config)
            minutes = (time.perf_counter() - start) / 60
            names = json.loads(Path(trained.artifact_uri, "model_card.json").read_text())["class_names"]
            val_paths, val_labels = labelled(tree, val_idx, names)
            known_paths, known_labels = labelled(known_tree, range(len(known_tree.paths)), names)
            train = labelled(tree, train_idx, names)
            figures = score_model(
                trained.artifact_uri, val_paths, val_labels, known_paths, known_labels, unknown, train, args.shrinkage
            )
        photos = {"val": len(val_paths), "known": len(known_paths), **{k: len(v) for k, v in unknown.items()}}
        figures.update(
            model=model, recipe=recipe, seed=args.seed, minutes=round(minutes, 1), photos=photos,
            val_accuracy=trained.metrics["val_accuracy"], machine=platform.processor() or platform.machine(),
        )  # fmt: skip
        results.append(figures)
        print(json.dumps(figures, indent=2), flush=True)
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
