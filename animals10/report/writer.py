"""Writing the comparison report: report.md, a self-contained report.html and the PNGs beside them, and
metrics.json, from the scores of `animals10.evaluation` and the training histories in the artifacts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from animals10 import storage
from animals10.card import read_card
from animals10.errors import ArtifactError, StorageError
from animals10.evaluation import ModelEvaluation, evaluate_models
from animals10.report.contents import build_document

logger = logging.getLogger(__name__)

HISTORY_FILE = "history.json"
REQUIRED_HISTORY_KEYS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")


def read_history(model_uri: str) -> list[dict]:
    """The per-epoch metrics training wrote beside the model (history.json)."""
    uri = storage.join(str(model_uri), HISTORY_FILE)
    try:
        raw = storage.read_bytes(uri)
    except (FileNotFoundError, NotADirectoryError, StorageError) as error:
        raise ArtifactError(
            f"'{model_uri}' has no {HISTORY_FILE}, which the report's training curves need; evaluate an artifact "
            "written by `animals10 train`."
        ) from error
    try:
        history = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ArtifactError(f"The training history '{uri}' is not valid JSON ({error}).") from error
    if not isinstance(history, list) or not history or not all(isinstance(row, dict) for row in history):
        raise ArtifactError(f"The training history '{uri}' holds no epochs; it should be a list of per-epoch records.")
    missing = sorted({key for row in history for key in REQUIRED_HISTORY_KEYS if row.get(key) is None})
    if missing:
        raise ArtifactError(
            f"The training history '{uri}' lacks {', '.join(missing)} in some epochs; it cannot be plotted."
        )
    return history


@dataclass
class Report:
    """Where the report went, and what it says."""

    output: str
    markdown_uri: str
    html_uri: str
    metrics_uri: str
    image_uris: list[str]
    best_model: str
    best_reason: str
    evaluations: list[ModelEvaluation]


def render_report(
    evaluations: list[ModelEvaluation], histories: dict[str, list[dict]], output: str, samples: int = 16
) -> Report:
    """Writes report.md, report.html, the PNGs and metrics.json to `output` (local or s3://)."""
    output = str(output)
    document, best_name, reason = build_document(evaluations, histories, samples)
    image_uris = []
    for image in document.images:
        uri = storage.join(output, image.file_name)
        storage.write_bytes(uri, image.png)
        image_uris.append(uri)
    markdown_uri, html_uri, metrics_uri = (
        storage.join(output, name) for name in ("report.md", "report.html", "metrics.json")
    )
    storage.write_bytes(markdown_uri, document.to_markdown().encode())
    storage.write_bytes(html_uri, document.to_html().encode())
    summary = {"best_model": best_name, "reason": reason, "models": [e.to_dict() for e in evaluations]}
    storage.write_bytes(metrics_uri, json.dumps(summary, indent=2).encode())
    logger.info("Report written to %s", html_uri)
    return Report(output, markdown_uri, html_uri, metrics_uri, image_uris, best_name, reason, evaluations)


def write_report(
    model_uris: list[str],
    output: str,
    data: str | None = None,
    *,
    samples: int = 16,
    batch_size: int = 64,
    tta: bool = False,
    unknown: str | None = None,
) -> Report:
    """Scores each model (on its own validation split, or on `data`: a labelled tree or a Parquet output
    with true_label) and writes the comparison report to `output`. Every history is read first, so
    that a missing one fails before any scoring."""
    model_uris = [str(uri) for uri in model_uris]
    for uri in model_uris:
        read_card(uri)  # 'not a model artifact' before 'no history'
    histories = {uri: read_history(uri) for uri in model_uris}
    evaluations = evaluate_models(model_uris, data, batch_size=batch_size, tta=tta, unknown=unknown)
    return render_report(evaluations, histories, output, samples)
