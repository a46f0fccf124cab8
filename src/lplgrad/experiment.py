"""The active learning loop: trials x strategies x rounds, writing each round's row as it finishes.

Per trial t (seed S + t) every strategy starts from the same random initial set
and the same initial weights, so strategies are compared pairwise. Each round:
train on the labeled set, evaluate on the test set, score a random subset of
the unlabeled pool, label the top-k (the oracle is the dataset's labels).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lplgrad import artifacts
from lplgrad.artifacts import artifact_rounds
from lplgrad.checkpoint import checkpoint_path, save_checkpoint
from lplgrad.config import RunConfig
from lplgrad.data import Dataset
from lplgrad.datasets import load_dataset
from lplgrad.errors import UserError
from lplgrad.inference import evaluate
from lplgrad.models import LossPredictionModule, ResNet18
from lplgrad.pool import Pool
from lplgrad.progress import RoundLogger
from lplgrad.reproducibility import deterministic_algorithms
from lplgrad.results import RESULTS_FILE, append_row, write_atomic
from lplgrad.run_folder import check_out_dir, hold_run_folder, prepare_out_dir
from lplgrad.strategies import QueryContext, Strategy, create_strategy, strategy_class
from lplgrad.train import TrainingDiverged, fit

log = logging.getLogger(__name__)

# Purposes of derived seeds, so that e.g. the candidate subset never shares a stream with training.
SEED_INIT, SEED_TRAIN, SEED_SUBSET, SEED_QUERY, SEED_INITIAL_SET, SEED_ARTIFACTS = range(6)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from (run seed, trial, round, purpose, ...), stable across Python versions."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def labeled_schedule(initial: int, query: int, rounds: int, budget: int, pool_size: int) -> list[int]:
    """Labeled-set size at each training round: initial, initial + query, ... up to the budget."""
    if initial > pool_size:
        raise UserError(f"initial set ({initial}) is larger than the training pool ({pool_size} images)")
    if budget > 0:
        if budget > pool_size:
            raise UserError(f"budget ({budget}) is larger than the training pool ({pool_size} images)")
        rounds = 1 + math.ceil((budget - initial) / query)
        return [min(initial + r * query, budget) for r in range(rounds)]
    sizes = [initial + r * query for r in range(rounds)]
    if sizes[-1] > pool_size:
        raise UserError(
            f"{rounds} rounds of {query} after an initial {initial} need {sizes[-1]} images; "
            f"the training pool has {pool_size}"
        )
    return sizes


def build_models(config: RunConfig, dataset: Dataset, seed: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """Seeded ResNet-18 (stem by image size) and its loss prediction module, on ``device``."""
    channels, height, _ = dataset.image_shape
    stem = config.model.stem if config.model.stem != "auto" else ("cifar" if height <= 64 else "imagenet")
    with torch.random.fork_rng(devices=[]):  # seeds the initialization without touching the caller's generator
        torch.manual_seed(seed)
        model = ResNet18(dataset.num_classes, channels, config.model.width, stem)  # type: ignore[arg-type]
        loss_module = LossPredictionModule(model.feature_channels, config.model.loss_module_hidden)
    return model.to(device), loss_module.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrialsFailed(RuntimeError):
    """Some (strategy, trial) runs stopped on a training fault; the others finished."""


def _query(
    config: RunConfig,
    dataset: Dataset,
    strategy: Strategy,
    pool: Pool,
    model: nn.Module,
    loss_module: nn.Module | None,
    k: int,
    seeds: tuple[int, int],
) -> tuple[Tensor, Tensor | None, int]:
    """Score a seeded random subset of the unlabeled pool and return (selected, scores, #candidates)."""
    unlabeled = pool.unlabeled_indices()
    subset_gen = torch.Generator().manual_seed(seeds[0])
    candidates = unlabeled[torch.randperm(unlabeled.numel(), generator=subset_gen)[: config.active.subset]]
    ctx = QueryContext(
        model=model,
        dataset=dataset,
        candidates=candidates,
        labeled=pool.labeled_indices(),
        generator=torch.Generator().manual_seed(seeds[1]),
        loss_module=loss_module,
        batch_size=config.active.score_batch_size,
    )
    selection = strategy.select(ctx, k)
    return selection.indices, selection.scores, candidates.numel()


def run_strategy(
    config: RunConfig,
    dataset: Dataset,
    strategy: Strategy,
    trial: int,
    initial: Tensor,
    sizes: list[int],
    device: torch.device,
    out_dir: Path | None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The rounds of one strategy in one trial, from the start or after the checkpoint ``resume``.

    After each round the checkpoint is saved, then the row is appended to results.jsonl.
    Raises TrainingDiverged (with ``round`` set) on a non-finite training loss.
    """
    trial_seed = config.seed + trial
    pool = Pool(len(dataset.train))
    model, loss_module = build_models(config, dataset, derive_seed(trial_seed, 0, SEED_INIT), device)
    first_round = 0
    if resume is None:
        pool.label(initial, 0)
    else:
        pool.labeled_at = resume["labeled_at"].clone()
        first_round = resume["round"] + 1
        if "model" in resume:
            model.load_state_dict(resume["model"])
            loss_module.load_state_dict(resume["loss_module"])
    rows: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = list(resume["rows"]) if resume is not None else []  # for the checkpoint
    for round_index in range(first_round, len(sizes)):
        size = sizes[round_index]
        if round_index > 0 and not config.train.warm_start:
            model, loss_module = build_models(config, dataset, derive_seed(trial_seed, round_index, SEED_INIT), device)
        aux = loss_module if strategy.uses_loss_module else None
        start = time.perf_counter()
        try:
            fit(
                model,
                dataset,
                pool.labeled_indices(),
                config.train,
                derive_seed(trial_seed, round_index, SEED_TRAIN),
                loss_module=aux,
                progress=progress,
                description=f"{strategy.name} t{trial} r{round_index}",
            )
        except TrainingDiverged as error:
            error.round = round_index
            raise
        _sync(device)
        train_seconds = time.perf_counter() - start
        accuracy, per_class = evaluate(model, dataset, config.train.eval_batch_size)
        if out_dir is not None and config.save_artifacts and round_index in artifact_rounds(len(sizes)):
            found = artifacts.collect(
                model,
                dataset,
                pool.labeled_indices(),
                pool.unlabeled_indices(),
                derive_seed(config.seed, 0, SEED_ARTIFACTS),
                config.train.eval_batch_size,
            )
            artifacts.save(out_dir, strategy.name, trial, round_index, found)

        selected, scores, num_candidates, query_seconds = torch.empty(0, dtype=torch.long), None, 0, 0.0
        last = round_index + 1 == len(sizes)
        if not last:
            start = time.perf_counter()
            seeds = (
                derive_seed(trial_seed, round_index, SEED_SUBSET),
                derive_seed(trial_seed, round_index, SEED_QUERY),
            )
            selected, scores, num_candidates = _query(
                config, dataset, strategy, pool, model, aux, sizes[round_index + 1] - size, seeds
            )
            _sync(device)
            query_seconds = time.perf_counter() - start
            pool.label(selected, round_index + 1)

        row = {
            "strategy": strategy.name,
            "trial": trial,
            "seed": trial_seed,
            "round": round_index,
            "labeled": size,
            "test_accuracy": accuracy,
            "per_class_accuracy": per_class,
            "train_seconds": round(train_seconds, 3),
            "query_seconds": round(query_seconds, 3),
            "candidates": num_candidates,
            "selected": selected.tolist(),
            "selected_labels": dataset.train.labels[selected.to(dataset.train.labels.device)].tolist(),
            "selected_scores": None if scores is None else scores.tolist(),
            "reduction": getattr(strategy, "reduction", None),
            "device": str(device),
        }
        if out_dir is not None:
            history.append(row)
            state: dict[str, Any] = {"round": round_index, "labeled_at": pool.labeled_at.clone(), "rows": history}
            if not last:  # weights are only needed to continue
                state["model"] = model.state_dict()
                state["loss_module"] = loss_module.state_dict()
            save_checkpoint(checkpoint_path(out_dir, strategy.name, trial), state)
            append_row(out_dir / RESULTS_FILE, row)
        if on_row is not None:
            on_row(row)
        rows.append(row)
    return rows


def run_experiment(
    config: RunConfig,
    out_dir: Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = False,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Run every trial x strategy of ``config``; rows are returned and, with ``out_dir``, written as they finish."""
    for name in config.active.strategies:
        strategy_class(name)  # unknown names fail before any data is loaded
    if out_dir is not None:
        check_out_dir(out_dir)
    device = resolve_device(config.device)
    if config.deterministic and config.train.channels_last and device.type == "cpu":
        raise UserError("train.channels_last is not bit-reproducible on CPUs (oneDNN); drop it or drop --deterministic")
    with hold_run_folder(out_dir), deterministic_algorithms(config.deterministic):
        return _run_trials(config, out_dir, dataset, progress, resume, device)


def _run_trials(
    config: RunConfig,
    out_dir: Path | None,
    dataset: Dataset | None,
    progress: bool,
    resume: bool,
    device: torch.device,
) -> list[dict[str, Any]]:
    dataset = (dataset or load_dataset(config.data)).to(device)
    pool_size = len(dataset.train)
    active = config.active
    sizes = labeled_schedule(active.initial, active.query, active.rounds, active.budget, pool_size)
    trials = range(active.trial_offset, active.trial_offset + active.trials)
    pairs = [(name, trial) for trial in trials for name in active.strategies]
    checkpoints = prepare_out_dir(out_dir, config, pairs, resume) if out_dir is not None else {}
    if out_dir is not None:
        info = {"name": dataset.name, "classes": dataset.classes, "train": pool_size, "test": len(dataset.test)}
        write_atomic(out_dir / "dataset.json", json.dumps(info, indent=1) + "\n")
        if dataset.skipped_files:
            write_atomic(out_dir / "skipped_files.txt", "\n".join(dataset.skipped_files) + "\n")
    log.info(
        "%s: %d train / %d test images, %d classes; labeled sizes %s on %s",
        dataset.name,
        pool_size,
        len(dataset.test),
        dataset.num_classes,
        sizes,
        device,
    )
    remaining = sum(len(sizes) - (checkpoints[p]["round"] + 1 if p in checkpoints else 0) for p in pairs)
    logger = RoundLogger(remaining)
    rows, failures = [], []
    for trial in trials:
        trial_seed = config.seed + trial
        initial_gen = torch.Generator().manual_seed(derive_seed(trial_seed, 0, SEED_INITIAL_SET))
        initial = torch.randperm(pool_size, generator=initial_gen)[: active.initial]
        for name in active.strategies:
            state = checkpoints.get((name, trial))
            if state is not None and state["round"] + 1 == len(sizes):
                continue  # finished before
            if state is not None:
                log.info("%s trial %d: resuming after round %d", name, trial, state["round"])
            strategy = create_strategy(name, reduction=active.reduction, mixed_precision=active.mixed_precision)
            try:
                rows += run_strategy(
                    config,
                    dataset,
                    strategy,
                    trial,
                    initial,
                    sizes,
                    device,
                    out_dir,
                    progress,
                    on_row=logger,
                    resume=state,
                )
            except TrainingDiverged as error:
                # One diverging run must not cost the others: keep its finished rounds and go on.
                log.error("%s trial %d round %d: %s; its finished rounds are kept", name, trial, error.round, error)
                failures.append(f"{name} trial {trial} round {error.round}")
    if failures:
        raise TrialsFailed(
            f"training diverged in {', '.join(failures)} (try a lower train.lr); "
            "all other rounds finished and are saved"
        )
    return rows
