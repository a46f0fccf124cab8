"""One active learning round, the same for an experiment and a labeling project.

``run_round`` fits w_main (with w_aux when the strategy trains with it) on the labeled images,
measures it on the dataset's test split, lets the strategy choose k of the candidates, and hands
the choice to an oracle. The oracle is the only difference between the two uses:
- ``KnownLabels`` (``lplgrad run``): the dataset's labels, at once (``Pool.label``);
- ``project.oracle.PersonBatch`` (``lplgrad query`` and the page): a batch for a person, whose
  files, model and database rows are written together.
The candidates come from ``draw_candidates`` in both, and every seed from ``core.seeds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from lplgrad.config.schema import RunConfig
from lplgrad.core.pool import Pool
from lplgrad.core.seeds import SEED_QUERY, SEED_STOP, SEED_SUBSET, SEED_TRAIN, derive_seed, generator
from lplgrad.data import Dataset
from lplgrad.quality.assess import Assessment, assess
from lplgrad.runtime.distributed import share
from lplgrad.strategies import QueryContext, Strategy
from lplgrad.train.fit import FitResult, fit
from lplgrad.train.inference import evaluate, predict_all


@dataclass
class Models:
    """w_main and w_aux. w_aux is trained only by strategies with ``uses_aux_model``."""

    model: nn.Module
    aux_model: nn.Module


@dataclass(frozen=True)
class RoundInputs:
    """What a round is given. Indices are absolute indices into ``dataset.train``."""

    config: RunConfig
    dataset: Dataset
    labeled: Tensor  # the images the models are fitted on
    candidates: Tensor  # the images the strategy may choose (``draw_candidates``)
    k: int  # images to choose; 0: fit and measure only (an experiment's last round)
    seed: int  # the trial's seed (run seed + trial), or a project's seed
    round_index: int
    measure: bool = True  # evaluate on dataset.test (False: a project with too few labels to measure)
    progress: bool = False  # a bar of training steps on a terminal
    description: str = "train"
    on_epoch: Callable[[int, int], None] | None = None  # e.g. the page's progress line
    on_phase: Callable[[str], None] | None = None  # a line when training and when scoring start
    # Stopping criteria: the stop set's absolute indices, and the previous round's predicted class
    # of each (quality.assess.UNKNOWN where there is none): kappa compares the two models' predictions.
    stop_set: Tensor | None = None
    previous_stop: Tensor | None = None


@dataclass(frozen=True)
class Query:
    """What a round's query chose: absolute indices, their scores (if any), how many were scored."""

    selected: Tensor
    scores: Tensor | None
    candidates: int
    seconds: float


NO_QUERY = Query(torch.empty(0, dtype=torch.long), None, 0, 0.0)


@dataclass(frozen=True)
class RoundOutcome:
    fit: FitResult
    train_seconds: float
    accuracy: float | None  # fraction, None when the round was not measured
    per_class_accuracy: list[float | None] | None
    query: Query
    assessment: Assessment = field(default_factory=Assessment)  # interval, calibration, stop-set signals


class Oracle(Protocol):
    def receive(self, inputs: RoundInputs, outcome: RoundOutcome, models: Models) -> None:
        """Take the round's choice (``outcome.query``) to be labeled."""


@dataclass
class KnownLabels:
    """The simulation's oracle: the chosen images are labeled at once, in the next round."""

    pool: Pool

    def receive(self, inputs: RoundInputs, outcome: RoundOutcome, models: Models) -> None:
        if outcome.query.selected.numel():
            self.pool.label(outcome.query.selected, inputs.round_index + 1)


def draw_stop_set(pool_size: int, size: int, seed: int) -> Tensor:
    """An experiment's stop set: ``size`` pool images drawn once per trial (the same every round)."""
    order = torch.randperm(pool_size, generator=generator(seed, 0, SEED_STOP))
    return order[:size].sort().values


def draw_candidates(unlabeled: Tensor, subset: int, k: int, seed: int, round_index: int) -> Tensor:
    """A seeded random subset of ``unlabeled`` to score (Beluch et al. 2018): ``max(subset, k)`` of
    them, so a query larger than the subset still has enough to choose from."""
    order = torch.randperm(unlabeled.numel(), generator=generator(seed, round_index, SEED_SUBSET))
    return unlabeled[order[: max(subset, k)]]


def run_round(inputs: RoundInputs, strategy: Strategy, models: Models, oracle: Oracle) -> RoundOutcome:
    """Fit, measure, choose, hand over (module docstring). Raises ``TrainingDiverged`` on a
    non-finite loss or weights, before the oracle is given anything."""
    device = next(models.model.parameters()).device
    config = inputs.config
    aux_model = models.aux_model if strategy.uses_aux_model else None
    say = inputs.on_phase or (lambda message: None)
    say(f"round {inputs.round_index}: training on {inputs.labeled.numel()} labeled images")
    start = time.perf_counter()
    fitted = fit(
        models.model,
        inputs.dataset,
        inputs.labeled,
        config.train,
        derive_seed(inputs.seed, inputs.round_index, SEED_TRAIN),
        aux_model=aux_model,
        progress=inputs.progress,
        description=inputs.description,
        on_epoch=inputs.on_epoch,
    )
    _sync(device)
    train_seconds = time.perf_counter() - start
    evaluation = evaluate(models.model, inputs.dataset, config.train.eval_batch_size) if inputs.measure else None
    stop_logits, stop_trained = None, None
    if inputs.stop_set is not None and inputs.stop_set.numel():
        stop_logits = predict_all(models.model, inputs.dataset, inputs.stop_set, config.train.eval_batch_size)["logits"]
        stop_trained = torch.isin(inputs.stop_set.cpu(), inputs.labeled.cpu())
    assessment = assess(
        evaluation.logits if evaluation else None,
        evaluation.labels if evaluation else None,
        stop_logits,
        inputs.previous_stop,
        stop_trained,
    )
    query = NO_QUERY
    if inputs.k:
        say(f"round {inputs.round_index}: scoring {inputs.candidates.numel()} candidates ({strategy.name})")
        query = _select(inputs, strategy, models, aux_model)
    outcome = RoundOutcome(
        fitted,
        train_seconds,
        evaluation.accuracy if evaluation else None,
        evaluation.per_class if evaluation else None,
        query,
        assessment,
    )
    oracle.receive(inputs, outcome, models)
    return outcome


def _select(inputs: RoundInputs, strategy: Strategy, models: Models, aux_model: nn.Module | None) -> Query:
    device = next(models.model.parameters()).device
    start = time.perf_counter()
    ctx = QueryContext(
        model=models.model,
        dataset=inputs.dataset,
        candidates=inputs.candidates,
        labeled=inputs.labeled,
        generator=generator(inputs.seed, inputs.round_index, SEED_QUERY),
        aux_model=aux_model,
        batch_size=inputs.config.active.score_batch_size,
    )
    # Under torchrun every process computed the same picks; rank 0's are sent to all the same, so
    # the labeled sets can never drift apart (e.g. a library's float results differing by machine).
    selection = share(strategy.select(ctx, inputs.k))
    _sync(device)
    return Query(selection.indices, selection.scores, inputs.candidates.numel(), time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    """Wait for the GPU, so the timings measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
