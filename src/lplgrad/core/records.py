"""The record of one finished round: what it measured (shared by both stores), and the schema of a
results.jsonl line. A labeling project's rounds table holds the same ``Measured`` fields."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lplgrad.core.round import RoundOutcome


@dataclass(frozen=True)
class Measured:
    """What a round measured, computed once from ``run_round``'s outcome for both the experiment's
    results row and the labeling project's rounds table."""

    accuracy: float | None  # fraction; None: not measured (a project with too few labels)
    per_class_accuracy: list[float | None] | None  # None for a class absent from the measured images
    train_seconds: float
    steps: int  # optimizer steps the round trained (train.min_steps may add epochs)
    epochs: int
    query_seconds: float
    candidates: int  # unlabeled images scored (0 in an experiment's last round)
    # quality.assess: the accuracy's 95% Wilson interval, calibration, the stop set's signals
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    ece: float | None = None
    temperature: float | None = None
    reliability: list[list[float | None]] | None = None  # [images, mean confidence, accuracy] per bin
    stop_kappa: float | None = None
    stop_uncertainty: float | None = None

    @classmethod
    def of(cls, outcome: RoundOutcome) -> Measured:
        quality = outcome.assessment
        return cls(
            accuracy=outcome.accuracy,
            per_class_accuracy=outcome.per_class_accuracy,
            train_seconds=round(outcome.train_seconds, 3),
            steps=outcome.fit.steps,
            epochs=outcome.fit.epochs,
            query_seconds=round(outcome.query.seconds, 3),
            candidates=outcome.query.candidates,
            accuracy_low=quality.accuracy_low,
            accuracy_high=quality.accuracy_high,
            ece=quality.ece,
            temperature=quality.temperature,
            reliability=quality.reliability.to_json() if quality.reliability else None,
            stop_kappa=quality.stop_kappa,
            stop_uncertainty=quality.stop_uncertainty,
        )

    def quality(self) -> dict[str, Any]:
        """The fields added for stopping and calibration, by name (results rows, project rounds)."""
        return {name: getattr(self, name) for name in QUALITY_FIELDS}


QUALITY_FIELDS = (
    "accuracy_low",
    "accuracy_high",
    "ece",
    "temperature",
    "reliability",
    "stop_kappa",
    "stop_uncertainty",
)


@dataclass(frozen=True)
class RoundRecord:
    """One line of results.jsonl: a finished (strategy, trial, round). The schema of the file."""

    strategy: str
    trial: int
    seed: int  # the trial's seed, run seed + trial
    round: int
    labeled: int  # size of the labeled set the model was trained on
    test_accuracy: float  # fraction
    per_class_accuracy: list[float | None]  # None for a class with no test images
    train_seconds: float
    steps: int  # optimizer steps the round trained (train.min_steps may add epochs)
    epochs: int
    query_seconds: float
    candidates: int  # unlabeled images scored after this round (0 in the last round)
    selected: list[int]  # absolute training-set indices queried after this round
    selected_labels: list[int]
    selected_scores: list[float] | None  # None for strategies without scores (random, coreset)
    reduction: str | None  # the gradient-norm reduction of gradient-norm strategies
    device: str  # this process's device (rank 0's under torchrun)
    world_size: int = 1  # processes that trained and scored the round together (torchrun)
    # Stopping and calibration (``Measured``; absent in rows written before they existed)
    accuracy_low: float | None = None  # 95% Wilson interval of test_accuracy
    accuracy_high: float | None = None
    ece: float | None = None  # expected calibration error on the test set
    temperature: float | None = None  # temperature scaling fitted on the test set
    reliability: list[list[float | None]] | None = None  # [images, mean confidence, accuracy] per bin
    stop_kappa: float | None = None  # Cohen's kappa with the previous round's model on the stop set
    stop_uncertainty: float | None = None  # the stop set's mean normalised entropy

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
