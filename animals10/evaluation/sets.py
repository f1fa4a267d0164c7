"""What a model is scored on: the validation split it was trained with, recomputed from its card, or
any labelled tree, with the tree's classes mapped onto the model's."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from animals10.card import ModelCard
from animals10.data import read_labelled_tree, split_indices
from animals10.errors import ArtifactError, DataError

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSet:
    """The photos a model is scored on; `labels` index the model's class names."""

    description: str
    paths: list[str]
    labels: list[int]


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
