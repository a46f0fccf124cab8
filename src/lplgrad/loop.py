"""One strategy in one trial, round after round: train -> evaluate -> query -> record.

The loop knows nothing about files. Whatever should happen once a round is finished (the
checkpoint and results row of a run folder, artifacts, a progress line) is an observer's
``round_finished``. Every random draw of a round comes from a generator seeded by
(trial seed, round, purpose), so a round can be rerun or resumed bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from lplgrad.config import RunConfig
from lplgrad.data import Dataset
from lplgrad.distributed import share, world
from lplgrad.inference import evaluate
from lplgrad.models import LossPredictionModule, ResNet18
from lplgrad.pool import Pool
from lplgrad.records import RoundRecord
from lplgrad.strategies import QueryContext, Strategy
from lplgrad.train import FitResult, TrainingDiverged, fit

# Purposes of derived seeds, so that e.g. the candidate subset never shares a stream with training.
SEED_INIT, SEED_TRAIN, SEED_SUBSET, SEED_QUERY, SEED_INITIAL_SET, SEED_ARTIFACTS = range(6)
SEED_HOLDOUT = 7  # a labeling project's held-out labeled images (kept at 7: projects hold out the same ones)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, trial, round, purpose, ...), stable across Python versions."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def model_stem(config: RunConfig, height: int) -> str:
    """ResNet-18's stem: ``model.stem``, or for "auto" the CIFAR stem up to 64 px and the ImageNet one above."""
    return config.model.stem if config.model.stem != "auto" else ("cifar" if height <= 64 else "imagenet")


def build_models(config: RunConfig, dataset: Dataset, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Seeded w_main (ResNet-18, stem by image size) and w_aux (its loss prediction module), on ``device``."""
    stem = model_stem(config, dataset.image_shape[1])
    with torch.random.fork_rng(devices=[]):  # seeds the initialization without touching the caller's generator
        torch.manual_seed(seed)
        model = ResNet18(dataset.num_classes, dataset.image_shape[0], config.model.width, stem)  # type: ignore[arg-type]
        aux_model = LossPredictionModule(model.feature_channels, config.model.aux_hidden)
    return model.to(device), aux_model.to(device)


@dataclass
class Learner:
    """What one (strategy, trial) carries from round to round."""

    model: nn.Module  # w_main
    aux_model: nn.Module  # w_aux; trained only by strategies with ``uses_aux_model``
    pool: Pool


class RoundObserver(Protocol):
    def round_finished(self, record: RoundRecord, learner: Learner) -> None:
        """Called after each round, once the round's query is labeled in ``learner.pool``."""


@dataclass(frozen=True)
class Query:
    """What a round's query chose: absolute indices, their scores (if any), and how many were scored."""

    selected: Tensor
    scores: Tensor | None
    candidates: int
    seconds: float


NO_QUERY = Query(torch.empty(0, dtype=torch.long), None, 0, 0.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_round(
    config: RunConfig,
    dataset: Dataset,
    strategy: Strategy,
    learner: Learner,
    seed: int,
    description: str,
    progress: bool,
) -> tuple[float, FitResult]:
    """Fit w_main (with w_aux when the strategy uses it) on the labeled pool; returns seconds and what fit did."""
    device = next(learner.model.parameters()).device
    start = time.perf_counter()
    aux_model = learner.aux_model if strategy.uses_aux_model else None
    labeled = learner.pool.labeled_indices()
    result = fit(
        learner.model,
        dataset,
        labeled,
        config.train,
        seed,
        aux_model=aux_model,
        progress=progress,
        description=description,
    )
    _sync(device)
    return time.perf_counter() - start, result


def query_round(
    config: RunConfig, dataset: Dataset, strategy: Strategy, learner: Learner, k: int, seeds: tuple[int, ...]
) -> Query:
    """Score a seeded random subset of the unlabeled pool (R candidates) and pick the top ``k``."""
    device = next(learner.model.parameters()).device
    start = time.perf_counter()
    unlabeled = learner.pool.unlabeled_indices()
    subset_order = torch.randperm(unlabeled.numel(), generator=torch.Generator().manual_seed(seeds[0]))
    candidates = unlabeled[subset_order[: config.active.candidate_subset]]
    ctx = QueryContext(
        model=learner.model,
        dataset=dataset,
        candidates=candidates,
        labeled=learner.pool.labeled_indices(),
        generator=torch.Generator().manual_seed(seeds[1]),
        aux_model=learner.aux_model if strategy.uses_aux_model else None,
        batch_size=config.active.score_batch_size,
    )
    # Every process computed the same picks; rank 0's are sent to all the same, so the labeled sets
    # can never drift apart (e.g. a library's float results differing between machines).
    selection = share(strategy.select(ctx, k))
    _sync(device)
    return Query(selection.indices, selection.scores, candidates.numel(), time.perf_counter() - start)


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
    records = []
    for round_index in range(first_round, len(sizes)):
        if round_index > 0 and not config.train.warm_start:
            seed = derive_seed(trial_seed, round_index, SEED_INIT)
            learner.model, learner.aux_model = build_models(config, dataset, seed, device)
        try:
            seed, description = (
                derive_seed(trial_seed, round_index, SEED_TRAIN),
                f"{strategy.name} t{trial} r{round_index}",
            )
            train_seconds, trained = train_round(config, dataset, strategy, learner, seed, description, progress)
        except TrainingDiverged as error:
            error.round = round_index
            raise
        accuracy, per_class = evaluate(learner.model, dataset, config.train.eval_batch_size)
        query = NO_QUERY
        if round_index + 1 < len(sizes):
            seeds = (
                derive_seed(trial_seed, round_index, SEED_SUBSET),
                derive_seed(trial_seed, round_index, SEED_QUERY),
            )
            k = sizes[round_index + 1] - sizes[round_index]
            query = query_round(config, dataset, strategy, learner, k, seeds)
            learner.pool.label(query.selected, round_index + 1)
        record = RoundRecord(
            strategy=strategy.name,
            trial=trial,
            seed=trial_seed,
            round=round_index,
            labeled=sizes[round_index],
            test_accuracy=accuracy,
            per_class_accuracy=per_class,
            train_seconds=round(train_seconds, 3),
            steps=trained.steps,
            epochs=trained.epochs,
            query_seconds=round(query.seconds, 3),
            candidates=query.candidates,
            selected=query.selected.tolist(),
            selected_labels=dataset.train.labels[query.selected.to(dataset.train.labels.device)].tolist(),
            selected_scores=None if query.scores is None else query.scores.tolist(),
            reduction=getattr(strategy, "reduction", None),
            device=str(device),
            world_size=world()[1],
        )
        for observer in observers:
            observer.round_finished(record, learner)
        records.append(record)
    return records
