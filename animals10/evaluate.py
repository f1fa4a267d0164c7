"""Scoring models: each artifact on the validation split it was trained with, on any labelled tree,
or from a batch-inference Parquet output that has `true_label`.

Photos go through the same decode (`imaging.load_array`) and the same `Predictor` as batch inference
and serving, with the preprocessing stored in the artifact. Files that cannot be decoded are skipped
and counted, never fatal. `animals10 evaluate` scores the models and writes the comparison report
(`animals10.report`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from animals10 import storage
from animals10.card import ModelCard, read_card
from animals10.data import load_photo, read_labelled_tree, split_indices
from animals10.errors import ArtifactError, DataError, StorageError
from animals10.labels import class_name_for_folder
from animals10.metrics import (
    classification_metrics,
    confusion_matrix,
    log_loss,
    most_confused_pairs,
    top_k_hits,
)

logger = logging.getLogger(__name__)

TOP_K = 3  # top-3 accuracy, as the report shows it
NUM_CONFUSED_PAIRS = 5


@dataclass
class EvaluationSet:
    """The photos a model is scored on; `labels` index the model's class names."""

    description: str
    paths: list[str]
    labels: list[int]


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
        }


def evaluation_metrics(y_true, y_pred, class_names: list[str], probabilities=None, top3_hits=None) -> dict:
    """Loss, accuracy, macro and weighted precision/recall/F1, per-class values, the confusion matrix,
    top-3 accuracy and the most-confused pairs. `loss` and `top3_accuracy` are None when neither
    probabilities nor top-3 hits are known (e.g. scoring a Parquet output written with top_k < 3)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    metrics = classification_metrics(matrix, class_names)
    loss = None
    if probabilities is not None:
        loss = log_loss(probabilities, y_true)
        top3_hits = top_k_hits(probabilities, y_true, TOP_K)
    top3 = None if top3_hits is None or len(y_true) == 0 else float(np.mean(top3_hits))
    return {
        "num_images": int(len(y_true)),
        "loss": loss,
        "accuracy": metrics["accuracy"],
        "top3_accuracy": top3,
        **{key: value for key, value in metrics.items() if key != "accuracy"},
        "confusion_matrix": matrix.tolist(),
        "most_confused": most_confused_pairs(matrix, class_names, NUM_CONFUSED_PAIRS),
    }


# --- what to score ---------------------------------------------------------------------------------


def is_parquet_output(uri: str) -> bool:
    """True for a .parquet file or a folder holding .parquet files (a batch-inference output)."""
    if str(uri).lower().endswith(".parquet"):
        return True
    try:
        return bool(storage.list_files(uri, (".parquet",)))
    except StorageError:
        return False


def check_same_classes(card: ModelCard, model_uri: str, data_classes: list[str], data_uri: str) -> None:
    missing = [name for name in card.class_names if name not in data_classes]
    unknown = [name for name in data_classes if name not in card.class_names]
    if missing or unknown:
        details = "; ".join(
            part
            for part in (
                f"the data lacks {', '.join(missing)}" if missing else "",
                f"the model does not know {', '.join(unknown)}" if unknown else "",
            )
            if part
        )
        raise DataError(
            f"The model '{model_uri}' was trained on the classes {', '.join(card.class_names)} but the data at "
            f"'{data_uri}' has {', '.join(data_classes)} ({details}); score it on data with the same class folders."
        )


def read_tree_set(
    card: ModelCard, model_uri: str, data_uri: str, indices: list[int] | None = None, description: str = ""
) -> EvaluationSet:
    """The photos of a labelled tree (all, or those at `indices`), labelled with the model's class indices."""
    tree = read_labelled_tree(data_uri)
    check_same_classes(card, model_uri, tree.class_names, data_uri)
    to_model_index = [card.class_names.index(name) for name in tree.class_names]
    indices = list(range(len(tree.paths))) if indices is None else indices
    return EvaluationSet(
        description=description or f"all {len(indices)} photos of {data_uri}",
        paths=[tree.paths[i] for i in indices],
        labels=[to_model_index[tree.labels[i]] for i in indices],
    )


def read_validation_set(card: ModelCard, model_uri: str) -> EvaluationSet:
    """The validation split the model was trained with, recomputed from the data record in its card."""
    data_uri = card.data.get("data_uri")
    if not data_uri:
        raise ArtifactError(
            f"The model card of '{model_uri}' does not say which data it was trained on; pass --data DIR to score it."
        )
    val_fraction = float(card.data.get("val_fraction", 0.2))
    seed = int(card.data.get("split_seed", 42))
    if val_fraction <= 0:
        raise ArtifactError(f"'{model_uri}' was trained without a validation split; pass --data DIR to score it.")
    try:
        tree = read_labelled_tree(data_uri)
    except DataError as error:
        raise DataError(
            f"'{model_uri}' was trained on '{data_uri}', which cannot be read now ({str(error).rstrip('.')}); "
            "pass --data DIR to score it on a copy of that data."
        ) from error
    check_same_classes(card, model_uri, tree.class_names, data_uri)
    _, val = split_indices(tree, val_fraction, seed)
    expected = card.data.get("num_val")
    if expected is not None and int(expected) != len(val):
        logger.warning(
            "The validation split of %s has %d photos now but had %d in training: the data changed since.",
            data_uri,
            len(val),
            expected,
        )
    description = f"the validation split of {data_uri} ({len(val)} photos, {val_fraction:.0%}, seed {seed})"
    return read_tree_set(card, model_uri, data_uri, val, description)


def read_parquet_rows(uri: str) -> list[dict]:
    """All rows of a Parquet file or of the .parquet files under a folder."""
    import pyarrow.parquet as pq

    files = [uri] if str(uri).lower().endswith(".parquet") else storage.list_files(uri, (".parquet",))
    rows = []
    for file_uri in files:
        try:
            rows += pq.read_table(io.BytesIO(storage.read_bytes(file_uri))).to_pylist()
        except (OSError, ValueError) as error:
            raise DataError(f"'{file_uri}' is not a readable Parquet file ({error}).") from error
    return rows


def _true_class(value, class_names: list[str]) -> int | None:
    """`true_label` as written by batch inference: a class name (or an Italian folder name), or an index."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, np.integer)):
        return int(value) if 0 <= int(value) < len(class_names) else -1
    name = class_name_for_folder(str(value))
    return class_names.index(name) if name in class_names else -1


def score_parquet(
    card: ModelCard, model_uri: str, data_uri: str
) -> tuple[EvaluationSet, list[int], np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """Scores the predictions a batch job wrote: (set, predicted indices, confidences, top-3 hits or None, skipped)."""
    rows = read_parquet_rows(data_uri)
    if not rows:
        raise DataError(
            f"The Parquet output at '{data_uri}' has no rows; run batch inference on a labelled folder first."
        )
    if "true_label" not in rows[0]:
        raise DataError(
            f"The Parquet output at '{data_uri}' has no true_label column; run batch inference on a labelled tree (<root>/<class>/<photo>)."
        )
    model_values = {row.get("model") for row in rows} - {None, ""}
    own_names = {card.id, model_uri, model_uri.rstrip("/").rsplit("/", 1)[-1]}
    if model_values:
        rows = [row for row in rows if row.get("model") in own_names]
        if not rows:
            raise DataError(
                f"The predictions in '{data_uri}' were made by {', '.join(sorted(map(str, model_values)))}, not by '{model_uri}' "
                f"({card.id}); pass the artifact that made them."
            )
    paths, labels, predicted, confidences, hits, skipped = [], [], [], [], [], []
    top3_known = True
    for row in rows:
        path = str(row.get("path"))
        if row.get("error"):
            skipped.append((path, str(row["error"])))
            continue
        true_index = _true_class(row.get("true_label"), card.class_names)
        if true_index is None:
            skipped.append((path, "no true_label"))
            continue
        label = row.get("label")
        if label is None:
            skipped.append((path, "no prediction"))
            continue
        if true_index < 0 or label not in card.class_names:
            bad = row.get("true_label") if true_index < 0 else label
            raise DataError(
                f"The Parquet output at '{data_uri}' has the class '{bad}', which the model '{model_uri}' does not know "
                f"({', '.join(card.class_names)}); score it with the model that made it."
            )
        top_k = row.get("top_k") or []
        if isinstance(top_k, str):  # top_k stored as JSON text
            top_k = json.loads(top_k)
        top = [entry["label"] for entry in top_k]
        top3_known &= len(top) >= min(TOP_K, len(card.class_names))
        paths.append(path)
        labels.append(true_index)
        predicted.append(card.class_names.index(label))
        confidences.append(float(row.get("confidence") or 0.0))
        hits.append(card.class_names[true_index] in top[:TOP_K])
    if not paths:
        raise DataError(f"The Parquet output at '{data_uri}' has no scored row with a true_label; nothing to evaluate.")
    evaluation_set = EvaluationSet(
        f"the batch-inference predictions in {data_uri} ({len(paths)} photos)", paths, labels
    )
    return evaluation_set, predicted, np.asarray(confidences), (np.asarray(hits) if top3_known else None), skipped


# --- running the model -----------------------------------------------------------------------------


def predict_paths(predictor, paths: list[str], batch_size: int = 64, num_threads: int | None = None):
    """Runs `predictor` over photos in batches: ((M, C) probabilities, the M indices of `paths` scored,
    skipped [(path, why)])."""
    from tqdm.auto import tqdm

    num_threads = num_threads or min(8, (os.cpu_count() or 1) + 2)  # decoding waits on I/O too (S3)
    probabilities, kept, skipped = [], [], []
    with ThreadPoolExecutor(num_threads) as pool:
        starts = range(0, len(paths), batch_size)
        for start in tqdm(starts, desc="scoring", unit="batch", disable=None, leave=False):
            chunk = paths[start : start + batch_size]
            images = []
            for offset, (image, error) in enumerate(pool.map(lambda p: load_photo(p, predictor.image_size), chunk)):
                if image is None:
                    logger.warning("Skipping %s: %s.", chunk[offset], error)
                    skipped.append((chunk[offset], error))
                else:
                    images.append(image)
                    kept.append(start + offset)
            if not images:
                continue
            batch = np.stack(images)  # (B, S, S, 3) uint8
            probabilities.append(predictor.predict_probabilities(batch))
    num_classes = len(predictor.class_names)
    return (np.concatenate(probabilities) if probabilities else np.zeros((0, num_classes), np.float32)), kept, skipped


def evaluate_model(
    model_uri: str,
    data: str | None = None,
    *,
    batch_size: int = 64,
    tta: bool = False,
    device=None,
    name: str | None = None,
) -> ModelEvaluation:
    """Scores one artifact: on its validation split (data=None), on a labelled tree, or from a Parquet output."""
    from animals10.models import count_parameters
    from animals10.predictor import Predictor

    model_uri = str(model_uri)
    card = read_card(model_uri)
    name = name or model_uri.rstrip("/").rsplit("/", 1)[-1]
    if data is not None and is_parquet_output(str(data)):
        evaluation_set, predicted, confidence, top3, skipped = score_parquet(card, model_uri, str(data))
        metrics = evaluation_metrics(evaluation_set.labels, predicted, card.class_names, top3_hits=top3)
        num_parameters = None
        if tta:
            logger.warning("--tta does not apply to scoring a Parquet output: its predictions are already made.")
        return ModelEvaluation(
            name,
            model_uri,
            card.id,
            card.architecture,
            card.class_names,
            evaluation_set.description,
            metrics,
            evaluation_set.paths,
            np.asarray(evaluation_set.labels, np.int64),
            np.asarray(predicted, np.int64),
            confidence,
            skipped,
            num_parameters,
            card,
            tta=False,
        )

    evaluation_set = read_validation_set(card, model_uri) if data is None else read_tree_set(card, model_uri, str(data))
    predictor = Predictor(model_uri, device=device, top_k=TOP_K, tta=tta)
    logger.info("Scoring %s on %s", name, evaluation_set.description)
    probabilities, kept, skipped = predict_paths(predictor, evaluation_set.paths, batch_size)
    if not kept:
        raise DataError(
            f"None of the {len(evaluation_set.paths)} photos in {evaluation_set.description} could be decoded; check the files."
        )
    y_true = np.asarray([evaluation_set.labels[i] for i in kept], np.int64)
    y_pred = probabilities.argmax(axis=1).astype(np.int64)
    metrics = evaluation_metrics(y_true, y_pred, card.class_names, probabilities=probabilities)
    return ModelEvaluation(
        name,
        model_uri,
        card.id,
        card.architecture,
        card.class_names,
        evaluation_set.description,
        metrics,
        [evaluation_set.paths[i] for i in kept],
        y_true,
        y_pred,
        probabilities.max(axis=1).astype(np.float64),
        skipped,
        count_parameters(predictor.model),
        card,
        tta,
    )


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


# --- command line ----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got '{text}'")
    return value


def _count(text: str) -> int:
    import argparse

    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got '{text}'")
    return int(text)


def add_evaluate_arguments(parser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="ARTIFACT",
        help="a model artifact folder (local or s3://); repeat to compare models",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="DIR_OR_S3",
        help="score on this labelled tree (<root>/<class>/<photo>), or a batch-inference Parquet output "
        "with true_label; default: each model's own validation split",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="where to write report.md, report.html, the PNGs and metrics.json",
    )
    parser.add_argument(
        "--samples", type=_count, default=16, help="photos in each model's sample-prediction grid (default 16; 0: none)"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="photos per forward pass (default 64)")
    parser.add_argument("--tta", action="store_true", help="average each prediction with that of the mirrored photo")


def run_evaluate(args) -> int:
    from animals10.report import write_report

    report = write_report(
        args.model, args.output, data=args.data, samples=args.samples, batch_size=args.batch_size, tta=args.tta
    )
    for evaluation in report.evaluations:
        m = evaluation.metrics
        loss = "n/a" if m["loss"] is None else f"{m['loss']:.3f}"
        print(
            f"{evaluation.name}: accuracy {m['accuracy']:.1%}, macro F1 {m['macro_f1']:.3f}, loss {loss}, "
            f"{m['num_images']} photos scored, {len(evaluation.skipped)} skipped"
        )
    print(report.best_reason)
    print(f"Report written to {report.html_uri} (and report.md, PNGs, metrics.json beside it)")
    return 0
