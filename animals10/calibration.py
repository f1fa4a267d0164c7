"""Temperature scaling (Guo et al. 2017): one number T that divides the logits so that a confidence of
0.7 means right about 70% of the time. It is fitted on the validation split, minimising its negative
log-likelihood, and the artifact stores it (`ModelCard.calibration`).

Each worker sees only its share of the validation photos, so it keeps sums over a fixed grid of
temperatures (the NLL, and the expected-calibration-error bins at each) that the workers add up; the
temperature is the grid's best. Sums of fixed size: nothing grows with the photos.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# 121 temperatures from e^-3 to e^3, 5% apart, 1.0 among them (the uncalibrated model).
TEMPERATURES = np.exp(np.linspace(-3.0, 3.0, 121))
UNCALIBRATED = int(np.argmin(np.abs(TEMPERATURES - 1.0)))
ECE_BINS = 15


def empty_sums() -> np.ndarray:
    """Per temperature: the NLL sum, then per confidence bin: photos, confidence sum, correct sum."""
    return np.zeros((len(TEMPERATURES), 1 + 3 * ECE_BINS))


@torch.no_grad()
def calibration_sums(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(B, C) logits and (B,) labels -> the sums `empty_sums` lays out, for this batch."""
    temperatures = torch.as_tensor(TEMPERATURES, dtype=torch.float32, device=logits.device).view(-1, 1, 1)
    log_probabilities = F.log_softmax(logits.float().unsqueeze(0) / temperatures, dim=-1)  # (T, B, C)
    nll = -log_probabilities.gather(-1, labels.view(1, -1, 1).expand(len(TEMPERATURES), -1, 1)).squeeze(-1)
    confidence, predicted = log_probabilities.exp().max(-1)  # (T, B)
    correct = predicted == labels.view(1, -1)
    bins = reliability_bins(confidence.double().cpu().numpy(), correct.cpu().numpy())  # (T, ECE_BINS, 3)
    return np.concatenate([nll.double().sum(1, keepdim=True).cpu().numpy(), bins.reshape(len(TEMPERATURES), -1)], 1)


def expected_calibration_error(bins: np.ndarray) -> float:
    """(ECE_BINS, 3) bins of one temperature -> the photo-weighted mean |accuracy - confidence|."""
    count, confidence, correct = bins[:, 0], bins[:, 1], bins[:, 2]
    return float(np.abs(correct - confidence).sum() / max(count.sum(), 1))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Per-photo confidence of the predicted class and whether it was right, (..., N) each -> (...,
    ECE_BINS, 3) bins: photos, confidence sum, correct sum (one set per leading index)."""
    confidence = np.asarray(confidence, dtype=np.float64)
    lead, count = confidence.shape[:-1], confidence.shape[-1]
    rows = int(np.prod(lead))
    index = np.minimum((confidence.reshape(rows, count) * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    index += ECE_BINS * np.arange(rows)[:, None]
    columns = (np.ones(rows * count), confidence.ravel(), np.asarray(correct, dtype=np.float64).ravel())
    bins = np.stack([np.bincount(index.ravel(), weights=w, minlength=rows * ECE_BINS) for w in columns], -1)
    return bins.reshape(*lead, ECE_BINS, 3)


def calibration_metrics(sums: np.ndarray) -> dict:
    """Sums over all validation photos -> the fitted temperature, the NLL per photo before and after,
    and the ECE before and after."""
    count = sums[UNCALIBRATED, 1::3].sum()
    nll = sums[:, 0] / max(count, 1)
    best = int(np.argmin(nll))
    bins = sums[:, 1:].reshape(len(TEMPERATURES), ECE_BINS, 3)
    return {
        "temperature": float(TEMPERATURES[best]),
        "nll": float(nll[UNCALIBRATED]),
        "nll_calibrated": float(nll[best]),
        "ece": expected_calibration_error(bins[UNCALIBRATED]),
        "ece_calibrated": expected_calibration_error(bins[best]),
    }
