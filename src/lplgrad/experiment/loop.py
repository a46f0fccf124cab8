"""One strategy in one trial, round after round: ``core.round.run_round`` with known labels.

The loop knows nothing about files. Whatever should happen once a round is finished (the
checkpoint and results row of a run folder, artifacts, a progress line) is an observer's
``round_finished``. Every random draw of a round comes from a generator seeded by
(trial seed, round, purpose) (``core.seeds``), so a round can be rerun or resumed bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor, nn

from lplgrad.config.schema import RunConfig
from lplgrad.core.pool import Pool
from lplgrad.core.records import Measured, RoundRecord
from lplgrad.core.round import KnownLabels, Models, RoundInputs, draw_candidates, draw_stop_set, run_round
from lplgrad.core.seeds import SEED_INIT, derive_seed
from lplgrad.data import Dataset
from lplgrad.models.build import build_models
from lplgrad.runtime.distributed import world
from lplgrad.strategies import Strategy
from lplgrad.train.fit import TrainingDiverged


@dataclass
class Learner:
    """What one (strategy, trial) carries from round to round."""

    model: nn.Module  # w_main
    aux_model: nn.Module  # w_aux; trained only by strategies with ``uses_aux_model``
    pool: Pool
    stop_predictions: Tensor | None = None  # the last round's predicted classes of the stop set


class RoundObserver(Protocol):
    def round_finished(self, record: RoundRecord, learner: Learner) -> None:
        """Called after each round, once the round's query is labeled in ``learner.pool``."""


def run_rounds(
    config: RunConfig,
    dataset: Dataset,
    strategy: Strategy,
    trial: int,
    sizes: list[int],
    learner: Learner,
    first_round: int,
    observers: list[RoundObserver],
    progress: bool = False,
) -> list[RoundRecord]:
    """Rounds ``first_round`` .. len(sizes) - 1 of ``strategy`` in ``trial``; sizes[r] images are labeled in round r.

    Raises TrainingDiverged (with ``round`` set) on a non-finite loss or weights.
    """
    trial_seed = config.seed + trial
    device = next(learner.model.parameters()).device
    oracle = KnownLabels(learner.pool)
    stop_set = draw_stop_set(len(dataset.train), config.stop.set_size, trial_seed)
    records = []
    for round_index in range(first_round, len(sizes)):
        if round_index > 0 and not config.train.warm_start:
            seed = derive_seed(trial_seed, round_index, SEED_INIT)
            learner.model, learner.aux_model = build_models(config, dataset, seed, device)
        k = sizes[round_index + 1] - sizes[round_index] if round_index + 1 < len(sizes) else 0
        unlabeled = learner.pool.unlabeled_indices()
        inputs = RoundInputs(
            config=config,
            dataset=dataset,
            labeled=learner.pool.labeled_indices(),
            candidates=draw_candidates(unlabeled, config.active.candidate_subset, k, trial_seed, round_index),
            k=k,
            seed=trial_seed,
            round_index=round_index,
            progress=progress,
            description=f"{strategy.name} t{trial} r{round_index}",
            stop_set=stop_set,
            previous_stop=learner.stop_predictions,
        )
        try:
            outcome = run_round(inputs, strategy, Models(learner.model, learner.aux_model), oracle)
        except TrainingDiverged as error:
            error.round = round_index
            raise
        query, measured = outcome.query, Measured.of(outcome)
        learner.stop_predictions = outcome.assessment.stop_predictions
        assert measured.accuracy is not None and measured.per_class_accuracy is not None  # an experiment measures
        record = RoundRecord(
            strategy=strategy.name,
            trial=trial,
            seed=trial_seed,
            round=round_index,
            labeled=sizes[round_index],
            test_accuracy=measured.accuracy,
            per_class_accuracy=measured.per_class_accuracy,
            train_seconds=measured.train_seconds,
            steps=measured.steps,
            epochs=measured.epochs,
            query_seconds=measured.query_seconds,
            candidates=measured.candidates,
            selected=query.selected.tolist(),
            selected_labels=dataset.train.labels[query.selected.to(dataset.train.labels.device)].tolist(),
            selected_scores=None if query.scores is None else query.scores.tolist(),
            reduction=getattr(strategy, "reduction", None),
            device=str(device),
            world_size=world()[1],
            **measured.quality(),
        )
        for observer in observers:
            observer.round_finished(record, learner)
        records.append(record)
    return records
