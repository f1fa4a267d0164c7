"""One `Predictor`: the model loaded once, called on batches. Ray Data's `map_batches` and the Serve
deployment both use it, so online and offline predictions of the same photo are identical."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from animals10.artifact import load_model
from animals10.card import check_threshold
from animals10.device import autocast, on_gpu
from animals10.open_world import SCORES, OpenWorld, read_open_world, unknown_scores
from animals10.transforms import to_model_input

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """A batch's answers: calibrated probabilities, and where asked for and known, embeddings and the
    open-world score and flag (see open_world.py)."""

    probabilities: np.ndarray  # (B, C) float32
    embeddings: np.ndarray | None = None  # (B, D) float32, with predict(..., embeddings=True)
    scores: dict = field(default_factory=dict)  # every unknown score by name, (B,) each
    unknown_score: np.ndarray | None = None  # (B,) the score the threshold applies to; None: no open world
    unknown: np.ndarray | None = None  # (B,) bool: above the threshold


class Predictor:
    """Loads an artifact once; turns (B, S, S, 3) uint8 photos into class probabilities.

    Probabilities are calibrated: the logits are divided by the artifact's temperature
    (`card.calibration`, fitted on validation at the end of training; 1 for older artifacts).
    With the artifact's open-world statistics (`card.open_world`), each photo also gets an unknown
    score and flag; `unknown=False` leaves them out, `unknown_threshold` replaces the card's threshold.
    On a GPU: bfloat16 autocast, channels_last, pinned host memory and non-blocking copies.
    """

    def __init__(
        self,
        model_uri: str,
        device: torch.device | str | None = None,
        top_k: int = 3,
        mixed_precision: bool = True,
        tta: bool = False,
        unknown: bool = True,
        unknown_threshold: float | None = None,
    ):
        loaded = load_model(model_uri, device)
        self.model, self.card, self.device = loaded.model, loaded.card, loaded.device
        self.class_names = self.card.class_names
        self.preprocessing = self.card.preprocessing
        self.top_k = min(top_k, len(self.class_names))
        self.mixed_precision = mixed_precision
        self.tta = tta  # test-time augmentation: average with the mirrored photo
        self.temperature = float(self.card.calibration.get("temperature", 1.0))
        if not self.card.calibration:
            logger.info("%s has no calibration (an older artifact): its probabilities are the raw softmax.", model_uri)
        self.open_world = self._open_world(model_uri, unknown, unknown_threshold)
        if on_gpu(self.device):
            self.model = self.model.to(memory_format=torch.channels_last)

    def _open_world(self, model_uri: str, unknown: bool, threshold: float | None) -> OpenWorld | None:
        if not unknown:
            return None
        if not self.card.open_world:
            check_threshold(self.card.open_world, threshold, model_uri)
            logger.info("%s has no open-world statistics (an older artifact): no photo is flagged unknown.", model_uri)
            return None
        found = read_open_world(model_uri, self.card.open_world, threshold)
        return replace(found, statistics=found.statistics.to(self.device))

    @property
    def image_size(self) -> int:
        """The square size photos are decoded at for this model."""
        return self.preprocessing.image_size

    @property
    def model_id(self) -> str:
        return self.card.id

    @functools.cached_property
    def embedding_width(self) -> int:
        """The width of the embeddings (`predict(..., embeddings=True)`): the card's, else from one blank photo."""
        if "embedding_width" in self.card.open_world:
            return int(self.card.open_world["embedding_width"])
        blank = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
        return int(self.predict(blank, embeddings=True).embeddings.shape[1])

    @torch.inference_mode()
    def predict(self, images: np.ndarray | torch.Tensor, embeddings: bool = False) -> Prediction:
        """(B, S, S, 3) uint8 -> the batch's `Prediction`. With TTA the probabilities are averaged with the
        mirrored photo's; embeddings and unknown scores are the photo's own."""
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch wants writable memory (decoded photos may be read-only views)
        batch = torch.as_tensor(images)
        if len(batch) == 0:
            return self._empty(embeddings)
        if on_gpu(self.device):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = to_model_input(batch.to(self.device), self.preprocessing)
        with autocast(self.device, self.mixed_precision):
            features = self.model.embed(x).float()
            probabilities = (self.model.classify(features).float() / self.temperature).softmax(dim=1)
            single_view = probabilities
            if self.tta:
                mirrored = self.model.embed(x.flip(-1)).float()
                probabilities = (
                    probabilities + (self.model.classify(mirrored).float() / self.temperature).softmax(1)
                ) / 2
        prediction = Prediction(probabilities.cpu().numpy())
        if embeddings:
            prediction.embeddings = features.cpu().numpy()
        if self.open_world is not None:  # on the photo as it is (with TTA too): as the threshold was fitted
            prediction.scores = unknown_scores(single_view, features, self.open_world.statistics)
            prediction.unknown_score, prediction.unknown = self.open_world.flags(prediction.scores)
        return prediction

    def _empty(self, embeddings: bool) -> Prediction:
        prediction = Prediction(np.zeros((0, len(self.class_names)), dtype=np.float32))
        if embeddings:
            prediction.embeddings = np.zeros((0, self.embedding_width), np.float32)
        if self.open_world is not None:
            prediction.scores = {name: np.zeros(0, np.float32) for name in SCORES}
            prediction.unknown_score, prediction.unknown = np.zeros(0, np.float32), np.zeros(0, bool)
        return prediction

    def predict_probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, num_classes) float32 calibrated probabilities."""
        return self.predict(images).probabilities

    def describe(self, prediction: Prediction) -> list[dict]:
        """A `Prediction` -> per image: label, label_index, confidence, top_k [{label, prob}], and with an
        open world, unknown (bool) and unknown_score."""
        results = []
        for n, row in enumerate(prediction.probabilities):
            order = np.argsort(-row, kind="stable")[: self.top_k]
            result = {
                "label": self.class_names[int(order[0])],
                "label_index": int(order[0]),
                "confidence": float(row[order[0]]),
                "top_k": [{"label": self.class_names[int(i)], "prob": float(row[i])} for i in order],
            }
            if prediction.unknown is not None:
                result.update(unknown=bool(prediction.unknown[n]), unknown_score=float(prediction.unknown_score[n]))
            results.append(result)
        return results
