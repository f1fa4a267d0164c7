"""Scoring models: each artifact on the validation split it was trained with, on any labelled tree,
or from a batch-inference Parquet output that has `true_label`.

Photos go through the same decode (`data.load_photo`) and the same `Predictor` as batch inference
and serving, with the preprocessing stored in the artifact. Files that cannot be decoded are skipped
and counted, never fatal.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from animals10.calibration import expected_calibration_error, reliability_bins
from animals10.card import ModelCard, read_card
from animals10.data import load_photo
from animals10.errors import DataError
from animals10.evaluation.parquet import is_parquet_output, score_parquet
from animals10.evaluation.sets import read_tree_set, read_validation_set
from animals10.evaluation.unknown import open_world_metrics, read_unknown_paths
from animals10.metrics import classification_metrics, confusion_matrix, log_loss, most_confused_pairs, top_k_hits

logger = logging.getLogger(__name__)

TOP_K = 3  # top-3 accuracy, as the report shows it
NUM_CONFUSED_PAIRS = 5


@dataclass
class ModelEvaluation:
    """One model's scores, and the per-photo predictions behind them (for the sample grid)."""

    name: str  # unique within a report: the artifact folder's name
    model_uri: str
    model_id: str
    architecture: str
    class_names: list[str]
    source: str  # what it was scored on, in words
    metrics: dict  # see evaluation_metrics()
    paths: list[str]  # scored photos, parallel to the arrays below
    y_true: np.ndarray  # (N,) int64 class indices
    y_pred: np.ndarray  # (N,) int64 class indices
    confidence: np.ndarray  # (N,) float, probability of the predicted class
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of photos not scored
    open_world: dict | None = None  # unknown.open_world_metrics; None: the model has no open world
    num_parameters: int | None = None
    card: ModelCard | None = None
    tta: bool = False

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model_uri": self.model_uri,
            "model_id": self.model_id,
            "architecture": self.architecture,
            "class_names": list(self.class_names),
            "source": self.source,
            "num_images": len(self.paths),
            "num_skipped": len(self.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "num_parameters": self.num_parameters,
            "tta": self.tta,
            "metrics": self.metrics,
            "open_world": self.open_world,
        }


def evaluation_metrics(y_true, y_pred, class_names: list[str], probabilities=None, top3_hits=None) -> dict:
    """Loss, accuracy, macro and weighted precision/recall/F1, per-class values, the confusion matrix,
    top-3 accuracy and the most-confused pairs. `loss` and `top3_accuracy` are None when neither
    probabilities nor top-3 hits are known (e.g. scoring a Parquet output written with top_k < 3)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    metrics = classification_metrics(matrix, class_names)
    loss = ece = None
    if probabilities is not None:
        loss = log_loss(probabilities, y_true)
        top3_hits = top_k_hits(probabilities, y_true, TOP_K)
        if len(y_true):
            ece = expected_calibration_error(reliability_bins(np.max(probabilities, axis=1), y_pred == y_true))
    top3 = None if top3_hits is None or len(y_true) == 0 else float(np.mean(top3_hits))
    return {
        "num_images": int(len(y_true)),
        "loss": loss,
        "ece": ece,  # expected calibration error of the (calibrated) probabilities, 15 bins
        "accuracy": metrics["accuracy"],
        "top3_accuracy": top3,
        **{key: value for key, value in metrics.items() if key != "accuracy"},
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused_pairs(matrix, class_names, NUM_CONFUSED_PAIRS),
    }


def predict_paths(predictor, paths: list[str], batch_size: int = 64):
    """Runs `predictor` over photos in batches: (the `Prediction` of the M photos scored, the M indices of
    `paths` scored, skipped [(path, why)])."""
    from tqdm.auto import tqdm

    from animals10.predictor import Prediction

    predictions, kept, skipped = [], [], []
    with ThreadPoolExecutor(min(8, (os.cpu_count() or 1) + 2)) as pool:  # decoding waits on I/O too (S3)
        starts = range(0, len(paths), batch_size)
        for start in tqdm(starts, desc="scoring", unit="batch", disable=None, leave=False):
            chunk = paths[start : start + batch_size]
            images = []
            for offset, (image, error) in enumerate(pool.map(lambda p: load_photo(p, predictor.preprocessing), chunk)):
                if image is None:
                    logger.warning("Skipping %s: %s.", chunk[offset], error)
                    skipped.append((chunk[offset], error))
                else:
                    images.append(image)
                    kept.append(start + offset)
            if images:
                predictions.append(predictor.predict(np.stack(images)))  # (B, S, S, 3) uint8
    if not predictions:
        return predictor.predict(np.zeros((0, 1, 1, 3), np.uint8)), kept, skipped
    scores = {name: np.concatenate([p.scores[name] for p in predictions]) for name in predictions[0].scores}
    return Prediction(np.concatenate([p.probabilities for p in predictions]), scores=scores), kept, skipped


def evaluate_model(
    model_uri: str,
    data: str | None = None,
    *,
    batch_size: int = 64,
    tta: bool = False,
    unknown: str | None = None,
    name: str | None = None,
) -> ModelEvaluation:
    """Scores one artifact: on its validation split (data=None), on a labelled tree, or from a Parquet output;
    `unknown`: a folder of photos that show none of the classes, for the open-world figures."""
    from animals10.models import count_parameters
    from animals10.predictor import Predictor

    model_uri = str(model_uri)
    card = read_card(model_uri)
    name = name or model_uri.rstrip("/").rsplit("/", 1)[-1]
    if data is not None and is_parquet_output(str(data)):
        if tta:
            logger.warning("--tta does not apply to scoring a Parquet output: its predictions are already made.")
        evaluation_set, predicted, confidence, top3, skipped = score_parquet(card, model_uri, str(data), TOP_K)
        paths, y_true, y_pred = evaluation_set.paths, np.asarray(evaluation_set.labels), np.asarray(predicted)
        metrics = evaluation_metrics(y_true, y_pred, card.class_names, top3_hits=top3)
        num_parameters, tta, open_world = None, False, None
        if unknown:
            logger.warning("--unknown does not apply to scoring a Parquet output; score the photos with --data.")
    else:
        evaluation_set = (
            read_validation_set(card, model_uri) if data is None else read_tree_set(card, model_uri, str(data))
        )
        unknown_paths = read_unknown_paths(card, unknown) if unknown and card.open_world else None  # fails early
        predictor = Predictor(model_uri, top_k=TOP_K, tta=tta)
        logger.info("Scoring %s on %s", name, evaluation_set.description)
        prediction, kept, skipped = predict_paths(predictor, evaluation_set.paths, batch_size)
        probabilities = prediction.probabilities
        if not kept:
            raise DataError(
                f"None of the {len(evaluation_set.paths)} photos in {evaluation_set.description} could be decoded; "
                "check the files."
            )
        paths = [evaluation_set.paths[i] for i in kept]
        y_true = np.asarray([evaluation_set.labels[i] for i in kept])
        y_pred = probabilities.argmax(axis=1)
        confidence = probabilities.max(axis=1).astype(np.float64)
        metrics = evaluation_metrics(y_true, y_pred, card.class_names, probabilities=probabilities)
        num_parameters = count_parameters(predictor.model)
        open_world = _open_world(predictor, card, prediction, y_pred == y_true, unknown, unknown_paths, batch_size)
    return ModelEvaluation(
        name=name,
        model_uri=model_uri,
        model_id=card.id,
        architecture=card.architecture,
        class_names=card.class_names,
        source=evaluation_set.description,
        metrics=metrics,
        paths=paths,
        y_true=y_true.astype(np.int64),
        y_pred=y_pred.astype(np.int64),
        confidence=confidence,
        skipped=skipped,
        num_parameters=num_parameters,
        card=card,
        tta=tta,
        open_world=open_world,
    )


def _open_world(predictor, card: ModelCard, known, correct, unknown: str | None, paths: list[str] | None, batch_size):
    """The open-world figures of the known photos' `Prediction` (and of the unknown photos at `paths`)."""
    if predictor.open_world is None:
        if unknown:
            logger.warning("%s has no open-world statistics (an older artifact): --unknown is left out.", card.id)
        return None
    if not paths:
        return open_world_metrics(card, known.scores, correct)
    logger.info("Scoring %d photos that show none of the classes, from %s", len(paths), unknown)
    prediction, kept, _ = predict_paths(predictor, paths, batch_size)
    if not kept:
        raise DataError(f"None of the {len(paths)} photos under --unknown '{unknown}' could be decoded; check them.")
    labels = prediction.probabilities.argmax(axis=1)
    metrics = open_world_metrics(card, known.scores, correct, prediction.scores, labels)
    return {**metrics, "unknown_source": unknown}


def display_names(model_uris: list[str]) -> list[str]:
    """Short unique names: the artifact folder's name, with its parent folder where two would clash."""
    parts = [re.split(r"[\\/]+", str(uri).rstrip("/\\")) for uri in model_uris]
    names = [p[-1] for p in parts]
    for depth in range(2, max(len(p) for p in parts) + 1):
        if len(set(names)) == len(names):
            break
        names = ["/".join(p[-depth:]) if names.count(n) > 1 else n for p, n in zip(parts, names)]
    return names


def evaluate_models(model_uris: list[str], data: str | None = None, **kwargs) -> list[ModelEvaluation]:
    """Scores each artifact (see `evaluate_model`); names are unique within the list."""
    if not model_uris:
        raise DataError("No model was given; pass --model DIR at least once.")
    return [evaluate_model(uri, data, name=name, **kwargs) for uri, name in zip(model_uris, display_names(model_uris))]
