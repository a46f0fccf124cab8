"""The arithmetic of results: mean ± std over trials, area under the budget curve, paired differences."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1) over trials; the std of one trial is 0."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def aubc(labeled: Sequence[int], accuracy: Sequence[float]) -> float:
    """Area under the budget curve (Zhan et al. 2021): trapezoidal area of accuracy over labeled-set
    size, divided by the size range, so it is a mean accuracy in the accuracy's units.
    A single point's AUBC is its accuracy."""
    if len(labeled) != len(accuracy) or not labeled:
        raise ValueError("need one accuracy per labeled-set size")
    order = np.argsort(labeled)
    x = np.asarray(labeled, dtype=float)[order]
    y = np.asarray(accuracy, dtype=float)[order]
    if x[-1] == x[0]:
        return float(y.mean())
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a_t - b_t over paired trials and its Student-t confidence interval (nan with one trial)."""
    if len(a) != len(b) or not a:
        raise ValueError("need the same, non-zero number of paired values")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(diff.mean())
    if len(diff) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff)))
    return mean, mean - half, mean + half
