"""Calibration: is a confidence of 0.9 right nine times in ten?

- Expected calibration error (Guo et al. 2017, "On calibration of modern neural networks", eq. 3):
  ECE = sum_b (|B_b| / n) |acc(B_b) - conf(B_b)| over equal-width confidence bins B_b of the
  top-class confidence.
- Temperature scaling (Guo et al. 2017, sec. 4.2): one scalar T > 0 with softmax(z / T), fitted by
  minimising the negative log-likelihood of held-out labels; it changes confidences, never the
  predicted class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor

BINS = 10
MIN_FOR_TEMPERATURE = 30  # held-out labels below which T = 1 (too few to fit even one scalar well)


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin [i / B, (i + 1) / B): images, mean confidence and accuracy (None if empty)."""

    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]

    def ece(self) -> float:
        total = sum(self.counts)
        if total == 0:
            return 0.0
        return sum(
            n / total * abs(a - c)
            for n, a, c in zip(self.counts, self.accuracy, self.confidence, strict=True)
            if n and a is not None and c is not None
        )

    def to_json(self) -> list[list[float | None]]:
        return [[n, c, a] for n, c, a in zip(self.counts, self.confidence, self.accuracy, strict=True)]

    @classmethod
    def from_json(cls, rows: list[list[float | None]]) -> Reliability:
        return cls([int(r[0] or 0) for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def reliability(probabilities: Tensor, labels: Tensor, bins: int = BINS) -> Reliability:
    """The reliability diagram's bins of top-class confidence ``probabilities`` [N, C] vs ``labels`` [N]."""
    confidence, predicted = probabilities.double().max(dim=1)  # float64 sums: exact enough for any N
    correct = (predicted == labels.to(predicted.device)).double()
    which = (confidence * bins).long().clamp(max=bins - 1)  # a confidence of exactly 1 goes in the last bin
    counts = torch.bincount(which, minlength=bins).cpu()
    sum_confidence = torch.bincount(which, weights=confidence, minlength=bins).cpu()
    sum_correct = torch.bincount(which, weights=correct, minlength=bins).cpu()
    return Reliability(
        counts.tolist(),
        [float(s / n) if n else None for s, n in zip(sum_confidence, counts, strict=True)],
        [float(s / n) if n else None for s, n in zip(sum_correct, counts, strict=True)],
    )


def expected_calibration_error(probabilities: Tensor, labels: Tensor, bins: int = BINS) -> float:
    """ECE (module docstring), in [0, 1]."""
    return reliability(probabilities, labels, bins).ece()


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The T in [0.05, 20] minimising the NLL of softmax(logits / T) on ``labels``; 1.0 with fewer
    than ``MIN_FOR_TEMPERATURE`` labels. Searched over log T (the NLL is smooth there)."""
    if labels.numel() < MIN_FOR_TEMPERATURE:
        return 1.0
    z = logits.detach().double().cpu()
    y = labels.cpu()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / np.exp(log_t), y))

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def calibrated(logits: Tensor, temperature: float) -> Tensor:
    """softmax(logits / T): the probabilities shown to a person."""
    return torch.softmax(logits.float() / temperature, dim=1)
