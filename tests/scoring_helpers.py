"""Helpers of the scoring, report and `animals10 evaluate` tests: small custom_cnn artifacts with a
training history, as training writes them, and checks of the files and messages those tests look at.
The `artifacts` fixture (conftest.py) trains two of them once for the session."""

from __future__ import annotations

import json

from PIL import Image

from animals10.artifact import save_artifact
from animals10.card import ModelCard, Preprocessing
from animals10.cli.main import main

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


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # decodes the whole file: a damaged PNG fails here
        return image.size


def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and "Traceback" not in message


def _cli_error(capsys, *args) -> tuple[int, str]:
    code = main(["evaluate", *args])
    err = capsys.readouterr().err.strip()
    return code, err
