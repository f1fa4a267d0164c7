"""Classification metrics from a confusion matrix: no division by zero for classes never predicted."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predicted ones."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator > 0)


def classification_metrics(matrix: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Accuracy, macro and weighted precision/recall/F1, and per-class values with support."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(true_positives, predicted)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    total = support.sum()
    weights = support / total if total > 0 else np.zeros_like(support)
    names = class_names or [str(i) for i in range(len(matrix))]
    return {
        "accuracy": float(true_positives.sum() / total) if total > 0 else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(names, precision, recall, f1, support)
        },
    }


def log_loss(probabilities, y_true, eps: float = 1e-7) -> float:
    """Mean negative log-probability of the true class (cross-entropy of softmax outputs), in nats."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    true_probabilities = probabilities[np.arange(len(y_true)), y_true]
    return float(-np.log(np.clip(true_probabilities, eps, 1.0)).mean())


def top_k_hits(probabilities, y_true, k: int) -> np.ndarray:
    """(N,) bool: whether the true class is among the `k` most probable ones."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    k = min(k, probabilities.shape[1]) if probabilities.ndim == 2 else k
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return (top == y_true[:, None]).any(axis=1)


def most_confused_pairs(matrix: np.ndarray, class_names: list[str], limit: int = 5) -> list[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which other class.

    Ordered by count, then by the share of the true class's photos, then by class order."""
    matrix = np.asarray(matrix, dtype=np.int64)
    support = matrix.sum(axis=1)
    pairs = [
        (int(matrix[t, p]), matrix[t, p] / support[t], t, p)
        for t in range(len(matrix))
        for p in range(len(matrix))
        if t != p and matrix[t, p] > 0
    ]
    pairs.sort(key=lambda pair: (-pair[0], -pair[1], pair[2], pair[3]))
    return [
        {"true": class_names[t], "predicted": class_names[p], "count": count, "share_of_true": float(share)}
        for count, share, t, p in pairs[:limit]
    ]
