"""The record of one finished round: the schema of a results.jsonl line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


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

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
