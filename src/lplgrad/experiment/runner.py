"""An experiment: trials x strategies, each run through the round loop (``loop.py``), resumable.

Per trial t (seed S + t) every strategy starts from the same random initial set and the same
initial weights, so strategies are compared pairwise. The oracle is the dataset's labels.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from lplgrad.config.schema import RunConfig
from lplgrad.core.pool import Pool
from lplgrad.core.schedule import check_fits, labeled_schedule
from lplgrad.core.seeds import SEED_INIT, SEED_INITIAL_SET, derive_seed
from lplgrad.data import Dataset, load_dataset
from lplgrad.data.imagefolder import default_cache_dir
from lplgrad.errors import UserError
from lplgrad.experiment.loop import Learner, RoundObserver, run_rounds
from lplgrad.experiment.progress import RoundLogger
from lplgrad.experiment.run_folder import RunFolderRecorder, check_out_dir, hold_run_folder, prepare_out_dir
from lplgrad.models.backbones import create_pretrained
from lplgrad.models.build import build_models
from lplgrad.models.model_file import load_weights
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.runtime.distributed import is_writer, launched, local_rank_first, share
from lplgrad.runtime.reproducibility import deterministic_algorithms
from lplgrad.strategies import Strategy, create_strategy, strategy_class
from lplgrad.train.features import cached_features_dataset
from lplgrad.train.fit import TrainingDiverged

log = logging.getLogger(__name__)


class TrialsFailed(RuntimeError):
    """Some (strategy, trial) runs stopped on a training fault; the others finished."""


def resolve_device(name: str) -> torch.device:
    """``device`` as a torch device; "auto" is a GPU when there is one. Under torchrun, "cuda" (and
    "auto" on a GPU machine) means this process's GPU, LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if name == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def make_strategy(name: str, config: RunConfig) -> Strategy:
    """The strategy ``name`` with the scoring settings of ``config.active`` that it declares (e.g. the
    gradient-norm reduction) and, over them, its own options (``strategy.<name>.<option>``)."""
    settings = {
        "reduction": config.active.reduction,
        "score_bf16": config.active.score_bf16,
        "embeddings": config.active.embeddings,
        "embeddings_index": config.active.embeddings_index,
    }
    declared = strategy_class(name).options()
    options = {k: v for k, v in settings.items() if k in declared} | config.strategy.get(name, {})
    return create_strategy(name, **options)


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
    writer = out_dir if is_writer() else None  # under torchrun only rank 0 touches the run folder
    if writer is not None:
        check_out_dir(writer)
    device = resolve_device(config.device)
    if config.deterministic and config.train.channels_last and device.type == "cpu":
        raise UserError("train.channels_last is not bit-reproducible on CPUs (oneDNN); drop it or drop --deterministic")
    with hold_run_folder(writer), deterministic_algorithms(config.deterministic):
        return _run_trials(config, writer, dataset, progress, resume, device)


def _run_trials(
    config: RunConfig,
    out_dir: Path | None,
    dataset: Dataset | None,
    progress: bool,
    resume: bool,
    device: torch.device,
) -> list[dict[str, Any]]:
    with local_rank_first():  # under torchrun one process per machine downloads / decodes, then the others read
        dataset = (dataset or load_dataset(config.data)).to(device)
        if config.model.backbone.startswith("torchvision:"):  # its weights too: a download into torch's cache
            create_pretrained(config.model.backbone, dataset.num_classes, config.model.weights)
    if config.train.finetune in ("head", "last"):  # what is frozen runs once per image (sharded), cached
        cache = Path(config.data.cache_dir).expanduser() if config.data.cache_dir else default_cache_dir()
        model, cut = config.model, config.train.finetune
        dataset = cached_features_dataset(dataset, model.backbone, model.weights, cache, cut, model.input_size)
    pool_size = len(dataset.train)
    active = config.active
    sizes = labeled_schedule(active.initial_size, active.query_size, active.rounds, active.budget)
    check_fits(sizes, pool_size, by_budget=active.budget is not None)
    trials = range(active.trial_offset, active.trial_offset + active.trials)
    pairs = [(name, trial) for trial in trials for name in active.strategies]
    checkpoints = prepare_out_dir(out_dir, config, pairs, resume) if out_dir is not None else {}
    checkpoints = share(checkpoints)  # under torchrun, rank 0's: the other ranks may not see the folder
    if out_dir is not None:
        _write_dataset_files(out_dir, dataset)
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
        initial = torch.randperm(pool_size, generator=initial_gen)[: active.initial_size]
        for name in active.strategies:
            state = checkpoints.get((name, trial))
            if state is not None and state["round"] + 1 == len(sizes):
                continue  # finished before
            if state is not None:
                log.info("%s trial %d: resuming after round %d", name, trial, state["round"])
            learner = _start(config, dataset, trial_seed, initial, state, device)
            observers: list[RoundObserver] = [logger]
            if out_dir is not None:
                earlier = state["rows"] if state is not None else []
                observers.insert(0, RunFolderRecorder(out_dir, config, dataset, len(sizes), earlier))
            first_round = state["round"] + 1 if state is not None else 0
            strategy = make_strategy(name, config)
            try:
                records = run_rounds(config, dataset, strategy, trial, sizes, learner, first_round, observers, progress)
                rows += [record.to_row() for record in records]
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


def _start(
    config: RunConfig,
    dataset: Dataset,
    trial_seed: int,
    initial: torch.Tensor,
    state: dict[str, Any] | None,
    device: torch.device,
) -> Learner:
    """A (strategy, trial)'s models and pool: fresh with the initial set, or as a checkpoint left them."""
    model, aux_model = build_models(config, dataset, derive_seed(trial_seed, 0, SEED_INIT), device)
    pool = Pool(len(dataset.train))
    if state is None:
        pool.label(initial, 0)
        return Learner(model, aux_model, pool)
    pool.labeled_at = state["labeled_at"].clone()
    if "weights" in state:
        load_weights(model, aux_model, state["weights"])
    return Learner(model, aux_model, pool, state.get("stop_predictions"))


def _write_dataset_files(out_dir: Path, dataset: Dataset) -> None:
    """dataset.json (name, class names, split sizes) and skipped_files.txt (undecodable images)."""
    info = {"name": dataset.name, "classes": dataset.classes, "train": len(dataset.train), "test": len(dataset.test)}
    write_atomic(out_dir / "dataset.json", json.dumps(info, indent=1) + "\n")
    if dataset.skipped_files:
        write_atomic(out_dir / "skipped_files.txt", "\n".join(dataset.skipped_files) + "\n")
