"""Stopping criteria, computed every round and judged over the rounds so far.

- Stabilizing predictions (Bloodgood & Vijay-Shanker 2009, "A method for stopping active learning
  based on stabilizing predictions"): Cohen's kappa between the predictions of successive models on
  a fixed stop set of unlabeled images; stop once the mean kappa over a window of rounds (3) is >= a
  threshold (0.99), as the paper and small-text's ``KappaAverage`` do. The labels of the stop set
  are never needed, so it works in a person's loop.
- Overall uncertainty (Zhu et al. 2008; small-text's ``OverallUncertainty``): the mean normalised
  entropy H(p) / log C of the model's predictions on the stop set falls below a threshold.
- Accuracy plateau: the accuracy of each of the last ``window`` rounds lies inside the current
  round's 95% Wilson interval, i.e. what labeling gained lately is not measurable on this test set.
- Accuracy target (optional): the lower end of the Wilson interval reaches a target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import cohen_kappa_score
from torch import Tensor

STABLE = "stable predictions"
UNCERTAINTY = "low uncertainty"
PLATEAU = "accuracy plateau"
TARGET = "accuracy target"


def prediction_agreement(previous: np.ndarray, current: np.ndarray) -> float:
    """Cohen's kappa of two models' predicted classes on the same images (Bloodgood eq. 1:
    (agreement - chance agreement) / (1 - chance agreement)). Identical predictions give 1, also
    when both predict one class for every image (where the formula is 0 / 0)."""
    if previous.shape != current.shape or previous.size == 0:
        raise ValueError("kappa needs two non-empty predictions of the same images")
    if np.array_equal(previous, current):
        return 1.0
    return float(cohen_kappa_score(previous, current))


def mean_uncertainty(probabilities: Tensor) -> float:
    """Mean over images of the normalised entropy H(p) / log C, in [0, 1] (0: certain)."""
    classes = probabilities.shape[1]
    if classes < 2:
        return 0.0
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1)
    return float(entropy.mean() / math.log(classes))


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / total`` (scipy's binomtest)."""
    if total < 1:
        raise ValueError("a confidence interval needs at least one measured image")
    interval = binomtest(correct, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class Signals:
    """What one round measured for stopping (None where it was not measured)."""

    round: int
    labeled: int
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    kappa: float | None = None  # vs the previous round's model on the stop set; None in the first
    uncertainty: float | None = None


@dataclass(frozen=True)
class Rules:
    """Thresholds of the stopping rules (``config.schema.StopConfig`` holds the user's)."""

    kappa: float = 0.99
    window: int = 3
    uncertainty: float = 0.1
    target: float | None = None

    @classmethod
    def of(cls, stop: object) -> Rules:
        """From ``config.stop`` (a ``StopConfig``), by field name."""
        return cls(stop.kappa, stop.window, stop.uncertainty, stop.target)  # type: ignore[attr-defined]


def signals_of(row: dict[str, Any]) -> Signals:
    """A round's signals from an experiment's results row or a project's rounds row."""
    return Signals(
        int(row["round"]),
        int(row["labeled"]),
        row.get("test_accuracy", row.get("accuracy")),
        row.get("accuracy_low"),
        row.get("accuracy_high"),
        row.get("stop_kappa"),
        row.get("stop_uncertainty"),
    )


@dataclass(frozen=True)
class Criterion:
    name: str
    met: bool
    since: int | None  # the round from which it has been met without a break; None if not met
    detail: str  # e.g. "kappa 0.995, mean of the last 3 0.993 (needs a mean >= 0.99 over 3 rounds)"


def _met_each_round(history: Sequence[Signals], name: str, rules: Rules) -> list[bool]:
    """Whether rule ``name`` holds at each round of ``history`` (rounds in order)."""
    met = []
    for i, now in enumerate(history):
        recent = history[max(0, i - rules.window + 1) : i + 1]
        if name == STABLE:
            kappas = [s.kappa for s in recent if s.kappa is not None]
            met.append(len(kappas) == rules.window and sum(kappas) / len(kappas) >= rules.kappa)
        elif name == UNCERTAINTY:
            met.append(now.uncertainty is not None and now.uncertainty <= rules.uncertainty)
        elif name == PLATEAU:
            earlier = [s.accuracy for s in history[max(0, i - rules.window) : i]]
            low, high = now.accuracy_low, now.accuracy_high
            met.append(
                len(earlier) == rules.window
                and low is not None
                and high is not None
                and all(a is not None and low <= a <= high for a in earlier)
            )
        elif name == TARGET:
            met.append(rules.target is not None and now.accuracy_low is not None and now.accuracy_low >= rules.target)
        else:
            raise ValueError(f"unknown stopping rule {name!r}")
    return met


def rule_names(rules: Rules) -> list[str]:
    return [STABLE, UNCERTAINTY, PLATEAU] + ([TARGET] if rules.target is not None else [])


def first_stop(history: Sequence[Signals], name: str, rules: Rules) -> int | None:
    """Index into ``history`` of the first round at which rule ``name`` says stop, None if never."""
    met = _met_each_round(history, name, rules)
    return next((i for i, m in enumerate(met) if m), None)


def criteria(history: Sequence[Signals], rules: Rules) -> list[Criterion]:
    """Each rule's state at the last round of ``history``, and since which round it has held."""
    out = []
    for name in rule_names(rules):
        met = _met_each_round(history, name, rules)
        since = None
        if met and met[-1]:
            start = len(met) - 1
            while start > 0 and met[start - 1]:
                start -= 1
            since = history[start].round
        out.append(Criterion(name, bool(met and met[-1]), since, _detail(history, name, rules)))
    return out


def _detail(history: Sequence[Signals], name: str, rules: Rules) -> str:
    now = history[-1] if history else None
    if now is None:
        return "no rounds yet"
    if name == STABLE:
        kappas = [s.kappa for s in history[-rules.window :] if s.kappa is not None]
        if not kappas:
            return "no kappa yet (needs two trained rounds)"
        needs = f"needs a mean >= {rules.kappa} over {rules.window} rounds"
        return f"kappa {kappas[-1]:.3f}, mean of the last {len(kappas)} {sum(kappas) / len(kappas):.3f} ({needs})"
    if name == UNCERTAINTY:
        if now.uncertainty is None:
            return "not measured"
        return f"mean normalised entropy {now.uncertainty:.3f} (needs <= {rules.uncertainty})"
    if now.accuracy is None or now.accuracy_low is None or now.accuracy_high is None:
        return "accuracy not measured (needs test images or enough labels for a holdout)"
    interval = f"accuracy {100 * now.accuracy:.1f}% [{100 * now.accuracy_low:.1f}, {100 * now.accuracy_high:.1f}]"
    if name == PLATEAU:
        return f"{interval}; the last {rules.window} rounds' accuracies inside it"
    return f"{interval} (needs the lower end >= {100 * (rules.target or 0):.1f}%)"


def summary(history: Sequence[Signals], rules: Rules) -> str:
    """One line for a person: which criteria are met and since when, then whether to stop.

    E.g. "predictions stable since round 4 (kappa 0.995); accuracy 91.2% [89.8, 92.5]; you may stop".
    Stable predictions (or a reached target) is the rule that says "you may stop": it needs no labels
    beyond those a person already gave, and Bloodgood & Vijay-Shanker found it stops early without
    losing accuracy; the others are shown beside it."""
    if not history:
        return "no trained round yet"
    states = {c.name: c for c in criteria(history, rules)}
    now = history[-1]
    parts = []
    stable = states[STABLE]
    if stable.met:
        parts.append(f"predictions stable since round {stable.since} (kappa {now.kappa:.3f})")
    elif now.kappa is not None:
        mean = f"needs a mean >= {rules.kappa} over {rules.window} rounds"
        parts.append(f"predictions not yet stable (kappa {now.kappa:.3f}, {mean})")
    if now.accuracy is not None and now.accuracy_low is not None and now.accuracy_high is not None:
        plateau = " (no longer rising measurably)" if states[PLATEAU].met else ""
        parts.append(
            f"accuracy {100 * now.accuracy:.1f}% [{100 * now.accuracy_low:.1f}, {100 * now.accuracy_high:.1f}]{plateau}"
        )
    if states[UNCERTAINTY].met:
        parts.append(f"stop-set uncertainty {now.uncertainty:.3f}, low")
    done = stable.met or (TARGET in states and states[TARGET].met)
    parts.append("you may stop" if done else "keep labeling")
    return "; ".join(parts)
