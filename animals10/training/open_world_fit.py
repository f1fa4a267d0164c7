"""Fitting the open world after training, with Ray Data: the kept model embeds the training photos,
whose sums give the statistics; then it scores the validation photos, whose histogram gives the
threshold (open_world.py says what these are).

Both passes run in an actor pool of the training run's size (on GPUs where training ran on GPUs), the
model loaded once per actor from the artifact, as batch inference does. Each block of photos comes back
to the driver as one row of fixed-size sums, which the driver adds up: nothing it holds grows with the
photos.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from animals10.open_world import (
    DEFAULT_SCORE,
    SHRINKAGE,
    TRUE_POSITIVE_RATE,
    FeatureStatistics,
    OpenWorld,
    feature_sums,
    read_statistics,
    score_histogram,
    threshold_at,
    write_statistics,
)

logger = logging.getLogger(__name__)

BLOCK_PHOTOS = 512  # photos whose sums travel back as one row
FORWARD_BATCH = 64  # photos per forward pass


class SumPhotos:
    """A Ray Data actor: a block of decoded photos -> one row of fixed-size sums. First (`scoring`
    False) the embedding sums (`feature_sums`); then, with the statistics the artifact holds by then,
    the histogram of the default unknown score, read from the artifact."""

    def __init__(self, model_uri: str, scoring: bool = False):
        from animals10.predictor import Predictor

        self.predictor = Predictor(model_uri, unknown=False)
        self.num_classes = len(self.predictor.class_names)
        self.scoring = scoring
        if scoring:  # the Predictor scores as it does everywhere; no threshold yet, none is applied
            statistics = read_statistics(model_uri).to(self.predictor.device)
            self.predictor.open_world = OpenWorld(statistics, DEFAULT_SCORE, math.inf)

    def __call__(self, batch: dict) -> dict:
        good = np.asarray(batch["error"], dtype=object) == ""
        images, labels = batch["image"][good], np.asarray(batch["label"], dtype=np.int64)[good]
        sums = []
        for start in range(0, len(images), FORWARD_BATCH):
            prediction = self.predictor.predict(images[start : start + FORWARD_BATCH], embeddings=not self.scoring)
            if self.scoring:
                sums.append(score_histogram(prediction.unknown_score))
            else:
                sums.append(
                    feature_sums(prediction.embeddings, labels[start : start + FORWARD_BATCH], self.num_classes)
                )
        return {"sums": [np.sum(sums, axis=0).tobytes() if sums else b""], "photos": [len(images)]}


def _add_up(dataset, model_uri: str, scoring: bool, pool: dict) -> tuple[np.ndarray, int]:
    """Runs `SumPhotos` over `dataset`; the rows' sums added up, and the photos counted."""
    with warnings.catch_warnings():
        # `max_restarts` has no named parameter in Ray 2.60: Ray Data's own way (`map_batches(...,
        # max_restarts=0)`) goes through `**ray_remote_args`, which warns as deprecated on the console.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        rows = dataset.map_batches(
            SumPhotos,
            fn_constructor_kwargs={"model_uri": model_uri, "scoring": scoring},
            batch_size=BLOCK_PHOTOS,
            **pool,
        )
    return add_rows(rows.iter_rows())


def add_rows(rows) -> tuple[np.ndarray | None, int]:
    """`SumPhotos` rows -> their sums added up (None: no photo), and the photos counted. A block whose
    photos all failed to decode adds nothing."""
    total, photos = None, 0
    for row in rows:
        if not row["photos"]:
            continue
        sums = np.frombuffer(row["sums"], dtype=np.float64)
        total = sums.copy() if total is None else total + sums
        photos += int(row["photos"])
    return total, photos


def fit_open_world(model_uri: str, train, val, num_classes: int, workers: int, use_gpu: bool, cpus: int) -> dict:
    """Fits the statistics on `train` and the thresholds on `val` (Ray datasets of decoded photos at the
    model's preprocessing); writes the statistics into the artifact; returns its `card.open_world`."""
    # No actor restarts: Ray 2.60 warns on the console about every restartable Ray Data actor (ray#57733),
    # and a fit that loses an actor costs little: the artifact is already written, without an open world.
    pool = {"concurrency": (1, workers), "num_gpus": 1 if use_gpu else 0, "num_cpus": cpus, "max_restarts": 0}
    sums, num_train = _add_up(train, model_uri, False, pool)
    if not num_train:
        raise ValueError("no training photo could be decoded")
    statistics = FeatureStatistics.from_sums(sums, num_classes, SHRINKAGE)
    write_statistics(model_uri, statistics)  # the card names them only once the threshold is known too
    sums, num_val = _add_up(val, model_uri, True, pool)
    if not num_val:
        raise ValueError("no validation photo could be decoded")
    return {
        "score": DEFAULT_SCORE,
        "threshold": threshold_at(sums, TRUE_POSITIVE_RATE),
        "true_positive_rate": TRUE_POSITIVE_RATE,
        "shrinkage": SHRINKAGE,
        "embedding_width": int(statistics.whitening.shape[0]),
        "statistics_from": f"{num_train} training photos",
        "threshold_from": f"{num_val} validation photos",
    }
