"""Scoring predictions a batch job already made: a batch-inference Parquet output with `true_label`."""

from __future__ import annotations

import io
import json

import numpy as np

from animals10 import storage
from animals10.card import ModelCard
from animals10.errors import DataError, StorageError
from animals10.evaluation.sets import EvaluationSet
from animals10.labels import class_name_for_folder


def is_parquet_output(uri: str) -> bool:
    """True for a .parquet file or a folder holding .parquet files (a batch-inference output)."""
    if str(uri).lower().endswith(".parquet"):
        return True
    try:
        return bool(storage.list_files(uri, (".parquet",)))
    except StorageError:
        return False


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
    card: ModelCard, model_uri: str, data_uri: str, k: int
) -> tuple[EvaluationSet, list[int], np.ndarray, np.ndarray | None, list[tuple[str, str]]]:
    """Scores the predictions a batch job wrote: (set, predicted indices, confidences, top-`k` hits or
    None when rows list fewer than `k` classes, skipped)."""
    rows = read_parquet_rows(data_uri)
    if not rows:
        raise DataError(
            f"The Parquet output at '{data_uri}' has no rows; run batch inference on a labelled folder first."
        )
    if "true_label" not in rows[0]:
        raise DataError(
            f"The Parquet output at '{data_uri}' has no true_label column; run batch inference on a labelled tree "
            "(<root>/<class>/<photo>)."
        )
    model_values = {row.get("model") for row in rows} - {None, ""}
    own_names = {card.id, model_uri, model_uri.rstrip("/").rsplit("/", 1)[-1]}
    if model_values:
        rows = [row for row in rows if row.get("model") in own_names]
        if not rows:
            raise DataError(
                f"The predictions in '{data_uri}' were made by {', '.join(sorted(map(str, model_values)))}, not by "
                f"'{model_uri}' "
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
                f"The Parquet output at '{data_uri}' has the class '{bad}', which the model '{model_uri}' does not "
                "know "
                f"({', '.join(card.class_names)}); score it with the model that made it."
            )
        top_k = row.get("top_k") or []
        if isinstance(top_k, str):  # top_k stored as JSON text
            top_k = json.loads(top_k)
        top = [entry["label"] for entry in top_k]
        top3_known &= len(top) >= min(k, len(card.class_names))
        paths.append(path)
        labels.append(true_index)
        predicted.append(card.class_names.index(label))
        confidences.append(float(row.get("confidence") or 0.0))
        hits.append(card.class_names[true_index] in top[:k])
    if not paths:
        raise DataError(f"The Parquet output at '{data_uri}' has no scored row with a true_label; nothing to evaluate.")
    evaluation_set = EvaluationSet(
        f"the batch-inference predictions in {data_uri} ({len(paths)} photos)", paths, labels
    )
    return evaluation_set, predicted, np.asarray(confidences), (np.asarray(hits) if top3_known else None), skipped
