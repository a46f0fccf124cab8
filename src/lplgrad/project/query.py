"""``lplgrad query``: train on every labeled image, measure, and choose the next batch to label.

A round of ``core.round.run_round``, as in an experiment; the oracle is a person
(``project.oracle.PersonBatch``), so the round ends by writing the batch files and its database rows
instead of reading known labels. This module only reads the round's inputs from the project: only
the labeled images and a seeded candidate subset of the unlabeled pool are decoded, so memory
follows the subset, not the pool.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lplgrad.config.schema import RunConfig
from lplgrad.core.round import Models, Oracle, RoundInputs, draw_candidates, run_round
from lplgrad.core.seeds import SEED_HOLDOUT, SEED_INIT, derive_seed, generator
from lplgrad.data import Dataset, Split
from lplgrad.data.dataset import dataset_of
from lplgrad.errors import UserError
from lplgrad.experiment.runner import make_strategy, resolve_device
from lplgrad.models.build import build_models
from lplgrad.project import db
from lplgrad.project.duplicates import find_duplicates
from lplgrad.project.exchange import LOCAL_FILES_PREFIX, BatchItem
from lplgrad.project.feature_shards import receive_inputs
from lplgrad.project.features import backbone_key, project_features
from lplgrad.project.images import check_unchanged, decode, moved_fingerprints, project_keys
from lplgrad.project.oracle import NoOracle, PersonBatch, batch_folder
from lplgrad.project.settings import DEFAULT_BATCH, read_settings
from lplgrad.project.stopping import spaced_rounds
from lplgrad.quality.assess import UNKNOWN
from lplgrad.runtime.distributed import is_writer, launched
from lplgrad.runtime.folder_lock import folder_lock
from lplgrad.strategies import Strategy
from lplgrad.train.fit import TrainingDiverged

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2  # of the labeled images, to measure accuracy when the project has no test images
MIN_FOR_HOLDOUT = 20

__all__ = ["QueryResult", "batch_folder", "query", "round_dataset"]


@dataclass(frozen=True)
class QueryResult:
    round: int
    folder: Path
    queried: int
    labeled: int
    accuracy: float | None
    accuracy_on: str | None  # "test", "holdout" or None
    cold_start: bool


def query(
    project: Path,
    strategy_name: str | None = None,
    k: int = DEFAULT_BATCH,
    subset: int | None = None,
    include_pending: bool = False,
    url_prefix: str = LOCAL_FILES_PREFIX,
    on_progress: Callable[[str], None] | None = None,
) -> QueryResult:
    """Train, measure and write DIR/batches/round-N/ (batch.csv, label-studio.json and its config);
    the round is recorded in the database last, in one transaction, so a kill before that leaves
    the project as it was and the command can simply be run again.

    Each phase is a line for ``on_progress`` (the page, which also gets a line per epoch), else a
    log line (the CLI, which also shows a bar of training steps on a terminal). Under torchrun only
    rank 0 opens the database: it reads the round's inputs under the project lock and sends them
    to the other processes, which help train and score and write nothing."""
    if k < 1:
        raise UserError(f"--k must be >= 1, got {k}")
    writer = is_writer()
    if writer:
        db.require_project(project)
    with folder_lock(project, "project") if writer else nullcontext():
        conn = db.connect(project) if writer else None
        try:
            # Under torchrun the other ranks compute their shards of the missing features meanwhile.
            read = read_inputs(conn, project, k, subset, include_pending, launched()) if conn else None
            inputs: ProjectInputs = receive_inputs(read)
            name = strategy_name or inputs.config.active.strategies[0]
            strategy = make_strategy(name, inputs.config)  # a bad name fails before any decoding
            oracle = _oracle(project, conn, inputs, name, url_prefix)
            if not inputs.labeled:
                return _cold_start(project, inputs, oracle, k)
            return _trained_round(project, inputs, strategy, k, oracle, on_progress or log.info, on_progress)
        finally:
            if conn is not None:
                conn.close()


@dataclass(frozen=True)
class ProjectInputs:
    """What a round reads from the project."""

    config: RunConfig
    round_index: int
    labeled: list[db.ImageRow]
    candidates: list[db.ImageRow]
    test_rows: list[db.ImageRow]  # labeled test images
    classes: list[str]
    image_size: int
    # train.finetune = head: the backbone's cached features of labeled + candidates + stop_extra + test rows
    features: torch.Tensor | None = None
    feature_channels: tuple[int, ...] = ()
    stop_ids: list[int] = field(default_factory=list)  # the stop set (``stop_set_rows``)
    stop_extra: list[db.ImageRow] = field(default_factory=list)  # its images neither labeled nor candidates
    previous_stop: dict[int, int] = field(default_factory=dict)  # the last round's stop-set predictions
    copies: dict[int, set[int]] = field(default_factory=dict)  # exact and near duplicates among the candidates


def read_inputs(
    conn: Any, project: Path, k: int, subset: int | None, include_pending: bool, sharded: bool = False
) -> ProjectInputs:
    """The labeled images, a seeded candidate subset of the queryable ones (``draw_candidates``, as
    in an experiment), the labeled test images, after checking every file is the one registered."""
    config = read_settings(project)
    if config.active.embeddings and not config.active.embeddings_index:  # a round's images are not the pool
        raise UserError(
            "in a labeling project active.embeddings needs active.embeddings_index; "
            f"`lplgrad embed --project {project} --out FILE.npy` writes both"
        )
    round_index = len(db.rounds(conn)) + 1
    pool = db.pool_images(conn)
    pending = set() if include_pending else db.pending_ids(conn)
    queryable = [row for row in pool if row.label is None and row.id not in pending]
    if len(queryable) < k:
        raise UserError(
            f"only {len(queryable)} unlabeled images can be queried (labeled and pending ones are not); "
            f"lower --k, import the pending labels, or add --include-pending"
        )
    drawn = draw_candidates(
        torch.arange(len(queryable)), subset or config.active.candidate_subset, k, config.seed, round_index
    )
    candidates = [queryable[i] for i in drawn.tolist()]
    labeled = [row for row in pool if row.label is not None]
    test_rows = db.labeled_test_images(conn)
    stop_rows = stop_set_rows(pool, config.stop.set_size, config.seed) if labeled else []
    chosen = {row.id for row in labeled} | {row.id for row in candidates}
    stop_extra = [row for row in stop_rows if row.id not in chosen]
    used = labeled + candidates + stop_extra + test_rows
    checked = check_unchanged(used)  # a changed file is an error here, before any training
    moved = moved_fingerprints(used, checked)
    if moved:  # the same bytes under a new stat (a restore, a copy): remembered, so they are hashed once
        with db.transaction(conn):
            db.update_fingerprints(conn, moved)
    features: torch.Tensor | None = None
    channels: tuple[int, ...] = ()
    backbone = None
    if config.train.finetune == "head" and labeled:  # a cold start trains nothing
        features, spec = project_features(conn, checked, config, sharded=sharded)
        channels, backbone = spec.feature_channels, backbone_key(config, spec.image_size)
    n_labeled, n_candidates, n_extra = len(labeled), len(candidates), len(stop_extra)
    n_train = n_labeled + n_candidates + n_extra
    return ProjectInputs(
        config,
        round_index,
        checked[:n_labeled],
        checked[n_labeled : n_labeled + n_candidates],
        checked[n_train:],
        db.classes(conn),
        int(db.setting(conn, "image_size") or 64),
        features,
        channels,
        [row.id for row in stop_rows],
        checked[n_labeled + n_candidates : n_train],
        db.stop_predictions(conn, _compared_round(db.rounds(conn), len(labeled), k)),
        copies_among(
            find_duplicates(conn, backbone, config.active.duplicate_threshold).pool_pairs,
            {row.id for row in candidates},
        ),
    )


def _compared_round(rounds: list[dict[str, Any]], labeled: int, k: int) -> int:
    """The round whose stop-set predictions this one's are compared with: the latest trained round
    at least a batch (``k``) of labels before (0, none, when there is no such round)."""
    earlier = spaced_rounds(rounds, labeled, k)
    return int(earlier[-1]["round"]) if earlier else 0


def copies_among(pairs: list[tuple[db.ImageRow, db.ImageRow, float]], ids: set[int]) -> dict[int, set[int]]:
    """image id -> its duplicates, for the pairs whose two images are both in ``ids``."""
    copies: dict[int, set[int]] = {}
    for a, b, _ in pairs:
        if a.id in ids and b.id in ids:
            copies.setdefault(a.id, set()).add(b.id)
            copies.setdefault(b.id, set()).add(a.id)
    return copies


def stop_set_rows(pool: list[db.ImageRow], size: int, seed: int) -> list[db.ImageRow]:
    """The project's stop set: the ``size`` pool images whose hash of (seed, image id) is smallest.
    The same images every round; an image added later enters only if it hashes below the others,
    so successive rounds share nearly all of the set even as the pool grows."""

    def key(row: db.ImageRow) -> bytes:
        return hashlib.sha256(f"{seed}:{row.id}".encode()).digest()

    return sorted(sorted(pool, key=key)[:size], key=lambda row: row.id)


def _oracle(project: Path, conn: Any, inputs: ProjectInputs, strategy: str, url_prefix: str) -> Oracle:
    if conn is None:
        return NoOracle()
    return PersonBatch(
        project,
        conn,
        inputs.candidates,
        len(inputs.labeled),
        inputs.classes,
        strategy if inputs.labeled else "random (cold start)",
        len(inputs.labeled),
        None,
        url_prefix,
    )


def _cold_start(project: Path, inputs: ProjectInputs, oracle: Oracle, k: int) -> QueryResult:
    """No labels yet: a seeded uniform random sample. Without labels any model score is noise, and a
    random first batch is an unbiased picture of the pool (the candidates are already shuffled)."""
    items = [BatchItem(row.id, row.path, None, None, None, rank) for rank, row in enumerate(inputs.candidates[:k], 1)]
    folder = batch_folder(project, inputs.round_index)
    if isinstance(oracle, PersonBatch):
        oracle.items = items
        folder = oracle.record(inputs.round_index)
    return QueryResult(inputs.round_index, folder, len(items), 0, None, None, True)


def _trained_round(
    project: Path,
    inputs: ProjectInputs,
    strategy: Strategy,
    k: int,
    oracle: Oracle,
    report: Callable[[str], None],
    on_progress: Callable[[str], None] | None,
) -> QueryResult:
    config, round_index = inputs.config, inputs.round_index
    what = f"{len(inputs.labeled)} labeled and {len(inputs.candidates)} candidate images"
    if inputs.features is not None:
        report(f"round {round_index}: {what}, as the backbone's cached features")
    else:
        report(f"round {round_index}: decoding {what}")
    dataset, train_ids, measured_on = round_dataset(inputs)
    device = resolve_device(config.device)
    model, aux_model = build_models(config, dataset, derive_seed(config.seed, round_index, SEED_INIT), device)
    if isinstance(oracle, PersonBatch):
        oracle.accuracy_on = measured_on
    held = len(inputs.labeled) - len(train_ids)
    if held:
        report(f"round {round_index}: {held} of the {len(inputs.labeled)} labeled images held out to measure accuracy")
    first = len(inputs.labeled)
    stop_set, previous_stop = _stop_indices(inputs)
    if isinstance(oracle, PersonBatch):
        oracle.stop_ids = inputs.stop_ids
        oracle.copies = inputs.copies
    round_inputs = RoundInputs(
        config=config,
        dataset=dataset.to(device),
        labeled=train_ids,
        candidates=torch.arange(first, first + len(inputs.candidates)),
        k=k,
        seed=config.seed,
        round_index=round_index,
        measure=measured_on is not None,
        progress=True,
        description=f"round {round_index}",
        on_epoch=None if on_progress is None else lambda e, n: on_progress(f"round {round_index}: epoch {e} of {n}"),
        on_phase=report,
        stop_set=stop_set,
        previous_stop=previous_stop,
    )
    try:
        outcome = run_round(round_inputs, strategy, Models(model, aux_model), oracle)
    except TrainingDiverged as error:
        raise UserError(f"round {round_index} was not recorded: {error}") from None
    # the batch as written: a pick that nearly duplicates another pick of the batch is left out
    queried = len(oracle.items) if isinstance(oracle, PersonBatch) else outcome.query.selected.numel()
    return QueryResult(
        round_index,
        batch_folder(project, round_index),
        queried,
        len(inputs.labeled),
        outcome.accuracy,
        measured_on,
        False,
    )


def _stop_indices(inputs: ProjectInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """The stop set as indices into the round's train split (labeled + candidates + stop_extra), and
    the last round's prediction of each (``UNKNOWN`` for an image it did not predict)."""
    position = {row.id: i for i, row in enumerate(inputs.labeled + inputs.candidates + inputs.stop_extra)}
    stop_set = torch.tensor([position[i] for i in inputs.stop_ids], dtype=torch.long)
    previous = torch.tensor([inputs.previous_stop.get(i, UNKNOWN) for i in inputs.stop_ids], dtype=torch.long)
    return stop_set, previous


def round_dataset(inputs: ProjectInputs) -> tuple[Dataset, torch.Tensor, str | None]:
    """The round's Dataset: train = labeled + candidates (the candidates' labels are -1: never
    trained on), test = the test images, else a seeded 20% of the labeled ones held out of
    training; returns it with the train indices to fit on and what accuracy is measured on."""
    labeled, test_rows, classes = inputs.labeled, inputs.test_rows, inputs.classes
    unlabeled = inputs.candidates + inputs.stop_extra  # never trained on
    size = inputs.image_size
    index = {name: i for i, name in enumerate(classes)}
    labels = torch.tensor([index[row.label] for row in labeled if row.label is not None], dtype=torch.long)
    if inputs.features is not None:  # train.finetune = head: the backbone's cached features, nothing decoded
        images = inputs.features[: len(labeled) + len(unlabeled), :, None, None]
    else:
        images = decode(labeled + unlabeled, size)
    train_labels = torch.cat([labels, torch.full((len(unlabeled),), -1, dtype=torch.long)])
    train_ids = torch.arange(len(labeled))
    measured_on: str | None = None
    if test_rows:
        test_images = (
            inputs.features[len(labeled) + len(unlabeled) :, :, None, None]
            if inputs.features is not None
            else decode(test_rows, size)
        )
        test = Split(test_images, torch.tensor([index[r.label] for r in test_rows if r.label]))
        measured_on = "test"
    elif len(labeled) >= MIN_FOR_HOLDOUT:
        order = torch.randperm(len(labeled), generator=generator(inputs.config.seed, inputs.round_index, SEED_HOLDOUT))
        held = order[: max(1, int(HOLDOUT_FRACTION * len(labeled)))]
        train_ids = order[len(held) :].sort().values
        test = Split(images[held], labels[held])
        measured_on = "holdout"
    else:
        test = Split(images[:1], labels[:1])  # too few labels to measure; nothing is reported
    dataset = dataset_of(
        "project",
        Split(images, train_labels),
        test,
        classes,
        stats_of=images[: len(labeled)] if inputs.features is None else None,
        train_files=project_keys(labeled + unlabeled),  # for an embeddings index (typiclust, probcover)
        feature_channels=inputs.feature_channels,
    )
    return dataset, train_ids, measured_on
