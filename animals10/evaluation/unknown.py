"""Scoring how well a model tells its classes from everything else (`evaluate --unknown DIR`).

Known photos are the evaluation set; unknown ones a folder of photos that show none of the classes.
Every unknown score of open_world.py is scored apart: AUROC (unknown as the positive class) and the
false-positive rate at 95% true-positive rate (the share of unknown photos that pass a threshold
letting 95% of known ones through). For the score the model uses, with its threshold: the share of
each set flagged, which labels the unknown photos were given, and the coverage-accuracy curve (the
accuracy of the known photos kept as the threshold rises).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from animals10 import storage
from animals10.card import ModelCard
from animals10.errors import DataError
from animals10.labels import class_name_for_folder
from animals10.open_world import TRUE_POSITIVE_RATE

CURVE_POINTS = 20  # coverage 5%, 10%, ..., 100%


def read_unknown_paths(card: ModelCard, uri: str) -> list[str]:
    """The photos under `uri` (searched recursively), refused when there are none or when the folder
    is a labelled tree of the model's own classes."""
    paths = sorted(storage.list_files(uri, storage.IMAGE_EXTENSIONS))
    if not paths:
        raise DataError(
            f"--unknown '{uri}' holds no photos ({', '.join(storage.IMAGE_EXTENSIONS)}); give a folder of photos "
            "that show none of the classes."
        )
    relative = (_relative(p, uri) for p in paths)
    folders = {r.split("/", 1)[0] for r in relative if "/" in r}
    known = sorted(name for name in folders if class_name_for_folder(name) in card.class_names)
    if known:
        raise DataError(
            f"--unknown '{uri}' has folders of the model's own classes ({', '.join(known)}); give a folder of photos "
            "that show none of them (score a labelled tree with --data)."
        )
    return paths


def _relative(path: str, uri: str) -> str:
    """`path` under `uri`, as a /-separated relative path (local paths in any spelling, or s3://)."""
    if storage.is_s3(uri):
        return path[len(uri.rstrip("/")) + 1 :]
    return Path(os.path.relpath(path, uri)).as_posix()


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(an unknown photo scores above a known one), ties counted half: the area under the ROC curve."""
    ordered = np.sort(known)
    below = np.searchsorted(ordered, unknown, side="left")
    tied = np.searchsorted(ordered, unknown, side="right") - below
    return float(np.mean(below + tied / 2) / len(known))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = TRUE_POSITIVE_RATE) -> float:
    """The share of unknown photos that pass the threshold letting `tpr` of the known photos pass."""
    threshold = np.quantile(known, tpr, method="higher")
    return float(np.mean(unknown <= threshold))


def coverage_accuracy(scores: np.ndarray, correct: np.ndarray, points: int = CURVE_POINTS) -> list[list[float]]:
    """[[coverage, accuracy of the kept photos]]: photos kept from the lowest unknown score up."""
    order = np.argsort(scores, kind="stable")
    hits = np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    curve = []
    for step in range(1, points + 1):
        kept = max(1, int(round(len(scores) * step / points)))
        curve.append([kept / len(scores), float(hits[kept - 1] / kept)])
    return curve


def open_world_metrics(
    card: ModelCard,
    known_scores: dict,
    correct: np.ndarray,
    unknown_scores: dict | None = None,
    unknown_labels: np.ndarray | None = None,
) -> dict:
    """The figures above; `unknown_*` None: only those of the known photos."""
    score, threshold = card.open_world["score"], card.open_world["threshold"]
    known = known_scores[score]
    metrics = {
        "score": score,
        "threshold": threshold,
        "known_flagged": float(np.mean(known > threshold)),
        "coverage_accuracy": coverage_accuracy(known, correct),
    }
    if unknown_scores is None:
        return metrics
    unknown = unknown_scores[score]
    labels = np.asarray(unknown_labels)
    metrics.update(
        num_unknown=len(unknown),
        unknown_flagged=float(np.mean(unknown > threshold)),
        unknown_labels={name: float(np.mean(labels == i)) for i, name in enumerate(card.class_names)},
        per_score={
            name: {
                "auroc": auroc(known_scores[name], unknown_scores[name]),
                "fpr_at_95_tpr": fpr_at_tpr(known_scores[name], unknown_scores[name]),
            }
            for name in known_scores
        },
    )
    return metrics
