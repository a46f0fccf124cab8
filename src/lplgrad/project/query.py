"""``lplgrad query``: train on every labeled image, measure, and choose the next batch to label.

The same parts as an experiment round (``loop.build_models``, ``train.fit``, a registered
strategy's ``select``); the oracle is a person, so the round ends by writing the batch files
instead of reading known labels. Only the labeled images and a seeded candidate subset of the
unlabeled pool are decoded, so memory follows the subset, not the pool.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from lplgrad.atomic_io import save_atomic, write_atomic
from lplgrad.config import RunConfig
from lplgrad.data import Augment, Dataset, Split, channel_stats
from lplgrad.distributed import is_writer, share
from lplgrad.errors import UserError
from lplgrad.experiment import make_strategy, resolve_device
from lplgrad.folder_lock import folder_lock
from lplgrad.inference import evaluate, predict
from lplgrad.loop import (
    SEED_HOLDOUT,
    SEED_INIT,
    SEED_QUERY,
    SEED_SUBSET,
    SEED_TRAIN,
    build_models,
    derive_seed,
    model_stem,
)
from lplgrad.project import db
from lplgrad.project.exchange import LOCAL_FILES_PREFIX, BatchItem, batch_csv, label_studio_config, label_studio_tasks
from lplgrad.project.images import check_unchanged, decode, moved_fingerprints, project_keys
from lplgrad.project.settings import read_settings
from lplgrad.strategies import QueryContext, Strategy
from lplgrad.train import TrainingDiverged, fit

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2  # of the labeled images, to measure accuracy when the project has no test images
MIN_FOR_HOLDOUT = 20


@dataclass(frozen=True)
class QueryResult:
    round: int
    folder: Path
    queried: int
    labeled: int
    accuracy: float | None
    accuracy_on: str | None  # "test", "holdout" or None
    cold_start: bool


@dataclass
class _Trained:
    """What the training part of a round produced (nothing on a cold start)."""

    items: list[BatchItem]
    strategy: str
    accuracy: float | None = None
    per_class_accuracy: list[float | None] | None = None
    accuracy_on: str | None = None
    model_file: str | None = None
    train_seconds: float = 0.0
    query_seconds: float = 0.0


def query(
    project: Path,
    strategy_name: str | None = None,
    k: int = 100,
    subset: int | None = None,
    include_pending: bool = False,
    url_prefix: str = LOCAL_FILES_PREFIX,
    on_progress: Callable[[str], None] | None = None,
) -> QueryResult:
    """Train, measure and write DIR/batches/round-N/ (batch.csv, label-studio.json and its config);
    the round is recorded in the database last, in one transaction, so a kill before that leaves
    the project as it was and the command can simply be run again.

    Under torchrun only rank 0 opens the database: it reads the round's inputs under the project
    lock and sends them to the other processes, which help train and score and write nothing."""
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    writer = is_writer()
    if writer:
        db.require_project(project)
    with folder_lock(project, "project") if writer else nullcontext():
        conn = db.connect(project) if writer else None
        try:
            inputs: _Inputs = share(_read_inputs(conn, project, k, subset, include_pending) if conn else None)
            name = strategy_name or inputs.config.active.strategies[0]
            strategy = make_strategy(name, inputs.config.active)
            started = datetime.now(UTC).isoformat()
            if inputs.labeled:
                done = _train_and_select(project, inputs, strategy, name, k, on_progress)
            else:
                done = _Trained(_cold_start(inputs.candidates, k), "random (cold start)")
            round_index, labeled = inputs.round_index, len(inputs.labeled)
            summary = (len(done.items), labeled, done.accuracy, done.accuracy_on, not inputs.labeled)
            if conn is None:
                return QueryResult(round_index, batch_folder(project, round_index), *summary)
            folder = _write_batch(project, round_index, done.items, inputs.classes, url_prefix)
            with db.transaction(conn):
                record = {
                    "round": round_index,
                    "strategy": done.strategy,
                    "model_file": done.model_file,
                    "labeled": labeled,
                    "queried": len(done.items),
                    "accuracy": done.accuracy,
                    "accuracy_on": done.accuracy_on,
                    "per_class_accuracy": None
                    if done.per_class_accuracy is None
                    else json.dumps(done.per_class_accuracy),
                    "train_seconds": round(done.train_seconds, 3),
                    "query_seconds": round(done.query_seconds, 3),
                    "started": started,
                    "finished": datetime.now(UTC).isoformat(),
                }
                items: list[tuple[object, ...]] = [
                    (i.image_id, i.rank, i.score, i.suggested_label, i.confidence) for i in done.items
                ]
                db.add_round(conn, record, items)
        finally:
            if conn is not None:
                conn.close()
    return QueryResult(round_index, folder, *summary)


@dataclass(frozen=True)
class _Inputs:
    """What a round reads from the project."""

    config: RunConfig
    round_index: int
    labeled: list[db.ImageRow]
    candidates: list[db.ImageRow]
    test_rows: list[db.ImageRow]  # labeled test images
    classes: list[str]
    image_size: int


def _read_inputs(conn: Any, project: Path, k: int, subset: int | None, include_pending: bool) -> _Inputs:
    config = read_settings(project)
    if config.active.embeddings and not config.active.embeddings_index:  # a round's images are not the pool
        raise UserError(
            "in a labeling project active.embeddings needs active.embeddings_index; "
            f"`lplgrad embed --project {project} --out FILE.npy` writes both"
        )
    round_index = len(db.rounds(conn)) + 1
    pool = db.images(conn, "WHERE images.role = 'pool'")
    candidates = _candidates(
        conn,
        pool,
        k,
        subset or config.active.candidate_subset,
        include_pending,
        derive_seed(config.seed, round_index, SEED_SUBSET),
    )
    labeled = [row for row in pool if row.label is not None]
    test_rows = db.images(conn, "WHERE images.role = 'test' AND labels.image_id IS NOT NULL")
    used = labeled + candidates + test_rows
    checked = check_unchanged(used)  # a changed file is an error here, before any training
    moved = moved_fingerprints(used, checked)
    if moved:  # the same bytes under a new stat (a restore, a copy): remember it, so they are hashed once
        with db.transaction(conn):
            db.update_fingerprints(conn, moved)
    n_labeled, n_candidates = len(labeled), len(candidates)
    return _Inputs(
        config,
        round_index,
        checked[:n_labeled],
        checked[n_labeled : n_labeled + n_candidates],
        checked[n_labeled + n_candidates :],
        db.classes(conn),
        int(db.setting(conn, "image_size") or 64),
    )


def _candidates(
    conn: Any, pool: list[db.ImageRow], k: int, subset: int, include_pending: bool, seed: int
) -> list[db.ImageRow]:
    """A seeded random subset of the unlabeled images not waiting in an earlier batch."""
    pending = set() if include_pending else db.pending_ids(conn)
    candidates = [row for row in pool if row.label is None and row.id not in pending]
    if len(candidates) < k:
        raise UserError(
            f"only {len(candidates)} unlabeled images can be queried (labeled and pending ones are not); "
            f"lower --k, import the pending labels, or add --include-pending"
        )
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return [candidates[i] for i in order[: max(k, subset)].tolist()]


def _train_and_select(
    project: Path,
    inputs: _Inputs,
    strategy: Strategy,
    name: str,
    k: int,
    on_progress: Callable[[str], None] | None,
) -> _Trained:
    """Fit on the labeled images, measure, save the model, and let the strategy pick k candidates.
    Each phase is a line for ``on_progress`` (the page), else a log line (the CLI, which also shows a
    bar of training steps on a terminal); the page also gets a line per epoch."""
    config, round_index, labeled, candidates = inputs.config, inputs.round_index, inputs.labeled, inputs.candidates
    report = on_progress or log.info
    on_epoch = None if on_progress is None else lambda e, n: on_progress(f"round {round_index}: epoch {e} of {n}")
    seed, classes, size, test_rows = config.seed, inputs.classes, inputs.image_size, inputs.test_rows
    report(f"round {round_index}: decoding {len(labeled)} labeled and {len(candidates)} candidate images")
    dataset, train_ids, test_note = _dataset(labeled, candidates, test_rows, classes, size, seed, round_index)
    device = resolve_device(config.device)
    model, aux_model = build_models(config, dataset, derive_seed(seed, round_index, SEED_INIT), device)
    dataset = dataset.to(device)
    aux = aux_model if strategy.uses_aux_model else None
    start = time.perf_counter()
    train_seed = derive_seed(seed, round_index, SEED_TRAIN)
    held = len(labeled) - len(train_ids)
    note = f" ({held} held out to measure accuracy)" if held else ""
    report(f"round {round_index}: training on {len(train_ids)} of {len(labeled)} labeled images{note}")
    try:
        fit(
            model,
            dataset,
            train_ids,
            config.train,
            train_seed,
            aux,
            progress=True,
            description=f"round {round_index}",
            on_epoch=on_epoch,
        )
    except TrainingDiverged as error:
        raise UserError(f"round {round_index} was not recorded: {error}") from None
    train_seconds = time.perf_counter() - start
    accuracy, per_class = evaluate(model, dataset, config.train.eval_batch_size) if test_note else (None, None)
    model_file = f"models/round-{round_index}.pt"
    if is_writer():
        save_atomic(project / model_file, _model_state(model, aux_model, config, dataset, size))
    report(f"round {round_index}: scoring {len(candidates)} candidates ({name})")
    start = time.perf_counter()
    candidate_ids = torch.arange(len(labeled), len(labeled) + len(candidates))
    query_seed = derive_seed(seed, round_index, SEED_QUERY)
    items = _select(strategy, model, aux, dataset, train_ids, candidate_ids, candidates, classes, k, config, query_seed)
    query_seconds = time.perf_counter() - start
    return _Trained(items, name, accuracy, per_class, test_note, model_file, train_seconds, query_seconds)


def _cold_start(candidates: list[db.ImageRow], k: int) -> list[BatchItem]:
    """No labels yet: a seeded uniform random sample. Without labels any model score is noise, and a
    random first batch is an unbiased picture of the pool (the candidates are already shuffled)."""
    chosen = candidates[:k]
    return [BatchItem(row.id, row.path, None, None, None, rank) for rank, row in enumerate(chosen, start=1)]


def _dataset(
    labeled: list[db.ImageRow],
    candidates: list[db.ImageRow],
    test_rows: list[db.ImageRow],
    classes: list[str],
    size: int,
    seed: int,
    round_index: int,
) -> tuple[Dataset, torch.Tensor, str | None]:
    """train = labeled + candidates (candidates' labels are -1: never trained on), test = the test
    images, else a seeded 20% of the labeled ones held out of training."""
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[row.label] for row in labeled if row.label is not None], dtype=torch.long)
    images = decode(labeled + candidates, size)
    train_labels = torch.cat([labels, torch.full((len(candidates),), -1, dtype=torch.long)])
    train_ids = torch.arange(len(labeled))
    note: str | None = None
    if test_rows:
        test = Split(decode(test_rows, size), torch.tensor([index[r.label] for r in test_rows if r.label]))
        note = "test"
    elif len(labeled) >= MIN_FOR_HOLDOUT:
        order = torch.randperm(
            len(labeled), generator=torch.Generator().manual_seed(derive_seed(seed, round_index, SEED_HOLDOUT))
        )
        held = order[: max(1, int(HOLDOUT_FRACTION * len(labeled)))]
        train_ids = order[len(held) :].sort().values
        test = Split(images[held], labels[held])
        note = "holdout"
    else:
        test = Split(images[:1], labels[:1])  # too few labels to measure; nothing is reported
    mean, std = channel_stats(images[: len(labeled)])
    dataset = Dataset(
        "project",
        Split(images, train_labels),
        test,
        classes,
        mean,
        std,
        Augment(crop_padding=max(1, size // 8), flip=True),
        train_files=project_keys(labeled + candidates),  # for an embeddings index (typiclust, probcover)
    )
    return dataset, train_ids, note


def _select(
    strategy: Strategy,
    model: torch.nn.Module,
    aux: torch.nn.Module | None,
    dataset: Dataset,
    labeled_ids: torch.Tensor,
    candidate_ids: torch.Tensor,
    candidates: list[db.ImageRow],
    classes: list[str],
    k: int,
    config: RunConfig,
    seed: int,
) -> list[BatchItem]:
    """The strategy's top k of the candidates, with the model's suggested class and its confidence."""
    ctx = QueryContext(
        model=model,
        dataset=dataset,
        candidates=candidate_ids,
        labeled=labeled_ids,
        generator=torch.Generator().manual_seed(seed),
        aux_model=aux,
        batch_size=config.active.score_batch_size,
    )
    selection = strategy.select(ctx, k)
    probabilities = torch.softmax(predict(model, dataset, selection.indices)["logits"], dim=1).cpu()
    confidence, suggested = probabilities.max(dim=1)
    first = int(candidate_ids[0])
    items = []
    for rank, (index, score) in enumerate(
        zip(
            selection.indices.tolist(),
            [None] * k if selection.scores is None else selection.scores.tolist(),
            strict=True,
        ),
        start=1,
    ):
        row = candidates[index - first]
        items.append(
            BatchItem(row.id, row.path, classes[int(suggested[rank - 1])], float(confidence[rank - 1]), score, rank)
        )
    return items


def _model_state(model: torch.nn.Module, aux: torch.nn.Module, config: RunConfig, dataset: Dataset, size: int) -> dict:
    return {
        "model": model.state_dict(),
        "aux_model": aux.state_dict(),
        "classes": dataset.classes,
        "image_size": size,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "width": config.model.width,
        "stem": model_stem(config, size),
    }


def batch_folder(project: Path, round_index: int) -> Path:
    return project / "batches" / f"round-{round_index}"


def _write_batch(project: Path, round_index: int, items: list[BatchItem], classes: list[str], url_prefix: str) -> Path:
    folder = batch_folder(project, round_index)
    write_atomic(folder / "batch.csv", batch_csv(items))
    write_atomic(folder / "label-studio.json", label_studio_tasks(items, f"lplgrad-round-{round_index}", url_prefix))
    write_atomic(folder / "label-studio-config.xml", label_studio_config(classes))
    return folder
