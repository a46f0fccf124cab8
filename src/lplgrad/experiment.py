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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lplgrad.config import RunConfig, read_toml, resolve, to_toml, without_slice
from lplgrad.data import Dataset
from lplgrad.datasets import load_dataset
from lplgrad.errors import UserError
from lplgrad.inference import evaluate
from lplgrad.models import LossPredictionModule, ResNet18
from lplgrad.pool import Pool
from lplgrad.results import CONFIG_FILE, RESULTS_FILE, append_row, read_rows, write_atomic
from lplgrad.strategies import QueryContext, Strategy, create_strategy, strategy_class
from lplgrad.train import fit

log = logging.getLogger(__name__)

# Purposes of derived seeds, so that e.g. the candidate subset never shares a stream with training.
SEED_INIT, SEED_TRAIN, SEED_SUBSET, SEED_QUERY, SEED_INITIAL_SET = range(5)


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
    torch.manual_seed(seed)
    model = ResNet18(dataset.num_classes, channels, config.model.width, stem)  # type: ignore[arg-type]
    loss_module = LossPredictionModule(model.feature_channels, config.model.loss_module_hidden)
    return model.to(device), loss_module.to(device)


@dataclass
class RoundResult:
    labeled: int
    accuracy: float
    per_class: list[float]
    train_seconds: float
    query_seconds: float
    selected: Tensor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_strategy(
    config: RunConfig,
    dataset: Dataset,
    strategy: Strategy,
    trial: int,
    initial: Tensor,
    sizes: list[int],
    device: torch.device,
    out_file: Path | None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """All rounds of one strategy in one trial; each row is appended to ``out_file`` as it finishes."""
    trial_seed = config.seed + trial
    pool = Pool(len(dataset.train))
    pool.label(initial, 0)
    model, loss_module = build_models(config, dataset, derive_seed(trial_seed, 0, SEED_INIT), device)
    aux = loss_module if strategy.uses_loss_module else None
    rows = []
    for round_index, size in enumerate(sizes):
        if round_index > 0 and not config.train.warm_start:
            model, loss_module = build_models(config, dataset, derive_seed(trial_seed, round_index, SEED_INIT), device)
            aux = loss_module if strategy.uses_loss_module else None
        start = time.perf_counter()
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
        _sync(device)
        train_seconds = time.perf_counter() - start
        accuracy, per_class = evaluate(model, dataset, config.train.eval_batch_size)

        selected, scores, num_candidates, query_seconds = torch.empty(0, dtype=torch.long), None, 0, 0.0
        if round_index + 1 < len(sizes):
            start = time.perf_counter()
            unlabeled = pool.unlabeled_indices()
            subset_gen = torch.Generator().manual_seed(derive_seed(trial_seed, round_index, SEED_SUBSET))
            candidates = unlabeled[torch.randperm(unlabeled.numel(), generator=subset_gen)[: config.active.subset]]
            ctx = QueryContext(
                model=model,
                dataset=dataset,
                candidates=candidates,
                labeled=pool.labeled_indices(),
                generator=torch.Generator().manual_seed(derive_seed(trial_seed, round_index, SEED_QUERY)),
                loss_module=aux,
                batch_size=config.active.score_batch_size,
            )
            selection = strategy.select(ctx, sizes[round_index + 1] - size)
            _sync(device)
            query_seconds = time.perf_counter() - start
            pool.label(selection.indices, round_index + 1)
            selected, scores, num_candidates = selection.indices, selection.scores, candidates.numel()

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
        if out_file is not None:
            append_row(out_file, row)
        if on_row is not None:
            on_row(row)
        rows.append(row)
    return rows


def prepare_out_dir(out_dir: Path, config: RunConfig, pairs: list[tuple[str, int]]) -> Path:
    """Create ``out_dir`` and write config.toml; or join a run already there as another slice.

    A second slice (other strategies or trials of the same run, e.g. from another machine) may
    write into the same folder when everything but the slice keys matches and none of its
    (strategy, trial) pairs has results yet. Anything else is refused: nothing is overwritten.
    """
    results = out_dir / RESULTS_FILE
    if results.exists() and results.stat().st_size > 0:
        config_file = out_dir / CONFIG_FILE
        if not config_file.exists():
            raise UserError(f"{out_dir} holds results but no {CONFIG_FILE}; choose a new --out")
        earlier = without_slice(resolve(read_toml(config_file)))
        differing = sorted(k for k, v in without_slice(config).items() if earlier.get(k) != v)
        if differing:
            raise UserError(
                f"{out_dir} holds a run with a different configuration ({', '.join(differing)}); choose a new --out"
            )
        done = {(row["strategy"], row["trial"]) for row in read_rows(results)}
        overlap = sorted(set(pairs) & done)
        if overlap:
            names = ", ".join(f"{s} trial {t}" for s, t in overlap[:4])
            raise UserError(f"{out_dir} already holds results for {names}; choose other --strategy/--trial-offset")
        return results
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / CONFIG_FILE, to_toml(config))
    return results


class RoundLogger:
    """One line per finished round, with an ETA from the mean time per round so far."""

    def __init__(self, total_rounds: int) -> None:
        self.total, self.done, self.start = total_rounds, 0, time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s trial %d round %d: %d labeled, test accuracy %.2f%%, train %.1fs, query %.1fs [%d/%d, ETA %s]",
            row["strategy"],
            row["trial"],
            row["round"],
            row["labeled"],
            100 * row["test_accuracy"],
            row["train_seconds"],
            row["query_seconds"],
            self.done,
            self.total,
            _duration(remaining),
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def run_experiment(
    config: RunConfig,
    out_dir: Path | None = None,
    dataset: Dataset | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Run every trial x strategy of ``config``; rows are returned and, with ``out_dir``, written as they finish."""
    for name in config.active.strategies:
        strategy_class(name)  # unknown names fail before any data is loaded
    device = resolve_device(config.device)
    dataset = (dataset or load_dataset(config.data)).to(device)
    pool_size = len(dataset.train)
    active = config.active
    sizes = labeled_schedule(active.initial, active.query, active.rounds, active.budget, pool_size)
    trials = range(active.trial_offset, active.trial_offset + active.trials)
    pairs = [(name, trial) for trial in trials for name in active.strategies]
    results_file = prepare_out_dir(out_dir, config, pairs) if out_dir is not None else None
    if out_dir is not None:
        info = {"name": dataset.name, "classes": dataset.classes, "train": pool_size, "test": len(dataset.test)}
        write_atomic(out_dir / "dataset.json", json.dumps(info, indent=1) + "\n")
    if out_dir is not None and dataset.skipped_files:
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
    logger = RoundLogger(len(pairs) * len(sizes))
    rows = []
    for trial in trials:
        trial_seed = config.seed + trial
        initial_gen = torch.Generator().manual_seed(derive_seed(trial_seed, 0, SEED_INITIAL_SET))
        initial = torch.randperm(pool_size, generator=initial_gen)[: active.initial]
        for name in active.strategies:
            strategy = create_strategy(name, reduction=active.reduction, mixed_precision=active.mixed_precision)
            rows += run_strategy(
                config, dataset, strategy, trial, initial, sizes, device, results_file, progress, on_row=logger
            )
    return rows
