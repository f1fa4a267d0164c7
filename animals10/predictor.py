"""One `Predictor`: the model loaded once, called on batches. Ray Data's `map_batches` and the Serve
deployment both use it, so online and offline predictions of the same photo are identical."""

from __future__ import annotations

import logging

import numpy as np
import torch

from animals10.artifact import load_model
from animals10.device import autocast, on_gpu
from animals10.transforms import to_model_input

logger = logging.getLogger(__name__)


class Predictor:
    """Loads an artifact once; turns (B, S, S, 3) uint8 photos into class probabilities.

    Probabilities are calibrated: the logits are divided by the artifact's temperature
    (`card.calibration`, fitted on validation at the end of training; 1 for older artifacts).
    On a GPU: bfloat16 autocast, channels_last, pinned host memory and non-blocking copies.
    """

    def __init__(
        self,
        model_uri: str,
        device: torch.device | str | None = None,
        top_k: int = 3,
        mixed_precision: bool = True,
        tta: bool = False,
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
        if on_gpu(self.device):
            self.model = self.model.to(memory_format=torch.channels_last)

    @property
    def image_size(self) -> int:
        """The square size photos are decoded at for this model."""
        return self.preprocessing.image_size

    @property
    def model_id(self) -> str:
        return self.card.id

    @torch.inference_mode()
    def predict_probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(B, S, S, 3) uint8 -> (B, num_classes) float32 probabilities."""
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # torch wants writable memory (decoded photos may be read-only views)
        batch = torch.as_tensor(images)
        if len(batch) == 0:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        if on_gpu(self.device):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = to_model_input(batch.to(self.device), self.preprocessing)
        with autocast(self.device, self.mixed_precision):
            probabilities = (self.model(x).float() / self.temperature).softmax(dim=1)
            if self.tta:
                mirrored = (self.model(x.flip(-1)).float() / self.temperature).softmax(dim=1)
                probabilities = (probabilities + mirrored) / 2
        return probabilities.cpu().numpy()

    def describe(self, probabilities: np.ndarray) -> list[dict]:
        """Probabilities -> per image: label, label_index, confidence, top_k [{label, prob}]."""
        results = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[: self.top_k]
            results.append(
                {
                    "label": self.class_names[int(order[0])],
                    "label_index": int(order[0]),
                    "confidence": float(row[order[0]]),
                    "top_k": [{"label": self.class_names[int(i)], "prob": float(row[i])} for i in order],
                }
            )
        return results
