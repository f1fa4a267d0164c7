"""Photos that are none of the classes: unknown scores, the statistics they need, the threshold.

Every score is an *unknown score*: higher means less like the photos the model was trained on.

    max_probability   1 - the calibrated probability of the predicted class (Hendrycks & Gimpel 2017)
    mahalanobis       the squared Mahalanobis distance of the L2-normalised embedding to the nearest
                      class mean, under one shared covariance (Lee et al. 2018), shrunk towards a
                      multiple of the identity, as a small training set may hold fewer photos
                      than the embedding has dimensions

The statistics (a whitening matrix and the whitened class means) come from sums over the training
photos that workers add up (`feature_sums`): their size is fixed by the classes and the embedding
width, never by the photos. The threshold is the score that `TRUE_POSITIVE_RATE` of the validation
photos stay under, read off a histogram of fixed size. The artifact stores both:
`open_world.safetensors` (statistics) and `ModelCard.open_world` (the score used and its threshold).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from animals10 import storage
from animals10.card import check_threshold
from animals10.errors import ArtifactError, StorageError

logger = logging.getLogger(__name__)

SCORES = ("max_probability", "mahalanobis")
DEFAULT_SCORE = "mahalanobis"  # by measurement: benchmarks/open_world.py, BENCHMARKS.md
TRUE_POSITIVE_RATE = 0.95  # the share of in-class validation photos the threshold lets pass
SHRINKAGE = 0.1  # share of the covariance replaced by its mean variance times the identity
STATISTICS_FILE = "open_world.safetensors"
# Histogram edges for the threshold: 0, then 10^-6 .. 10^6 in steps of 1.2% (200 a decade).
HISTOGRAM_EDGES = np.concatenate([[0.0], np.logspace(-6, 6, 2401)])


# --- statistics --------------------------------------------------------------------------------


def normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=1)


def feature_sums(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, D) embeddings and their (N,) labels -> one flat float64 array of sums that add up across
    batches and workers: per class the photo count and the sum of normalised embeddings, and the sum of
    their outer products."""
    x = normalise(torch.as_tensor(features)).double().numpy()
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    class_sums = np.zeros((num_classes, x.shape[1]))
    np.add.at(class_sums, labels, x)
    return np.concatenate([counts, class_sums.ravel(), (x.T @ x).ravel()])


@dataclass(frozen=True)
class FeatureStatistics:
    """The shared covariance of the normalised embeddings as a whitening matrix W (D, D), and the class
    means whitened (C, D): the squared Mahalanobis distance to class c is |W x - W mu_c|^2. Computed as
    a difference, not expanded, so that photos whose embeddings differ by float rounding (another batch)
    get the same score. Classes without training photos have no mean."""

    whitening: torch.Tensor
    class_means: torch.Tensor  # whitened

    @classmethod
    def from_sums(cls, sums: np.ndarray, num_classes: int, shrinkage: float = SHRINKAGE) -> FeatureStatistics:
        # `feature_sums` lays out C + C D + D^2 numbers: D is the root of that quadratic.
        width = int(round((-num_classes + math.sqrt(num_classes**2 + 4 * (len(sums) - num_classes))) / 2))
        counts = sums[:num_classes]
        class_sums = sums[num_classes : num_classes + num_classes * width].reshape(num_classes, width)
        second = sums[num_classes + num_classes * width :].reshape(width, width)
        present = counts > 0  # a class without training photos cannot be the nearest
        means = class_sums[present] / counts[present, None]
        # Within-class covariance: E[x x^T] minus the class means' share.
        covariance = (second - (means.T * counts[present]) @ means) / counts.sum()
        mean_variance = np.trace(covariance) / width
        covariance = (1 - shrinkage) * covariance + shrinkage * mean_variance * np.eye(width)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        whitening = eigenvectors.T / np.sqrt(np.maximum(eigenvalues, 1e-12))[:, None]  # W = L^-1/2 U^T
        return cls(
            torch.as_tensor(whitening, dtype=torch.float32), torch.as_tensor(means @ whitening.T, dtype=torch.float32)
        )

    def to(self, device) -> FeatureStatistics:
        return FeatureStatistics(self.whitening.to(device), self.class_means.to(device))

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings -> (B,) squared distance to the nearest class mean."""
        whitened = normalise(features) @ self.whitening.T  # (B, D)
        return ((whitened[:, None, :] - self.class_means[None]) ** 2).sum(-1).min(1).values


# --- scores and threshold --------------------------------------------------------------------------


def unknown_scores(probabilities: torch.Tensor, features: torch.Tensor, statistics: FeatureStatistics) -> dict:
    """Calibrated (B, C) probabilities and (B, D) embeddings -> {score name: (B,) float32 numpy}."""
    return {
        "max_probability": (1 - probabilities.max(1).values).float().cpu().numpy(),
        "mahalanobis": statistics.mahalanobis(features).float().cpu().numpy(),
    }


def score_histogram(scores: np.ndarray) -> np.ndarray:
    """(N,) scores -> counts over `HISTOGRAM_EDGES` (the last bin takes everything above)."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 0, HISTOGRAM_EDGES[-1])
    return np.histogram(clipped, bins=HISTOGRAM_EDGES)[0].astype(np.float64)


def threshold_at(histogram: np.ndarray, true_positive_rate: float = TRUE_POSITIVE_RATE) -> float:
    """The score that `true_positive_rate` of the photos counted in `histogram` do not exceed."""
    cumulative = np.cumsum(histogram)
    if cumulative[-1] == 0:
        raise ValueError("No validation photo was scored; the threshold cannot be chosen.")
    index = int(np.searchsorted(cumulative, true_positive_rate * cumulative[-1]))
    return float(HISTOGRAM_EDGES[index + 1])


@dataclass(frozen=True)
class OpenWorld:
    """What decides "unknown": the statistics, the score used and its threshold."""

    statistics: FeatureStatistics
    score: str
    threshold: float

    def flags(self, scores: dict) -> tuple[np.ndarray, np.ndarray]:
        """Scores of a batch -> ((B,) the score used, (B,) bool unknown)."""
        used = scores[self.score]
        return used, used > self.threshold


# --- in the artifact ---------------------------------------------------------------------------------


def write_statistics(uri: str, statistics: FeatureStatistics) -> None:
    from safetensors.torch import save

    tensors = {"whitening": statistics.whitening.contiguous(), "class_means": statistics.class_means.contiguous()}
    storage.write_bytes(storage.join(uri, STATISTICS_FILE), save(tensors))


def read_statistics(uri: str) -> FeatureStatistics:
    """The statistics in the artifact at `uri`, or an `ArtifactError` saying what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(storage.read_bytes(storage.join(uri, STATISTICS_FILE)))
        return FeatureStatistics(tensors["whitening"], tensors["class_means"])
    except (FileNotFoundError, StorageError) as error:
        raise ArtifactError(f"'{uri}' has an open_world entry in its card but no {STATISTICS_FILE}.") from error
    except (SafetensorError, KeyError) as error:
        raise ArtifactError(f"The open-world statistics in '{uri}' are damaged ({error}).") from error


def read_open_world(uri: str, card_entry: dict, threshold: float | None = None) -> OpenWorld:
    """The artifact's `OpenWorld`; `threshold` overrides the card's (checked against the score's range)."""
    check_threshold(card_entry, threshold, uri)
    chosen = card_entry["threshold"] if threshold is None else threshold
    return OpenWorld(read_statistics(uri), card_entry["score"], float(chosen))
