"""The run folder (``--out``): checked before any data is loaded, locked for the life of a run, made
ready for a fresh run, another slice of the same run, or ``--resume`` (a folder holding another run
is never overwritten), and written after each round by ``RunFolderRecorder``."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lplgrad.config.files import read_toml, to_toml
from lplgrad.config.schema import RunConfig, resolve, without_slice
from lplgrad.core.records import RoundRecord
from lplgrad.core.seeds import SEED_ARTIFACTS, derive_seed
from lplgrad.data import Dataset
from lplgrad.errors import UserError
from lplgrad.experiment import artifacts
from lplgrad.experiment.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_path,
    load_checkpoint,
    repair_results,
    save_checkpoint,
)
from lplgrad.experiment.loop import Learner
from lplgrad.experiment.results import CONFIG_FILE, RESULTS_FILE, append_row, read_rows
from lplgrad.models.build import architecture
from lplgrad.models.model_file import model_state
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.runtime.folder_lock import LOCK_FILE, folder_lock

log = logging.getLogger(__name__)


def check_out_dir(out_dir: Path) -> None:
    """Fail before any data is loaded when the run folder cannot be created or written (creates nothing)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"the run folder {out_dir} is a file; choose another --out")
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the run folder {out_dir}: {existing} is not a writable folder")


@contextmanager
def hold_run_folder(out_dir: Path | None) -> Iterator[None]:
    """Lock the run folder for the life of a run (``folder_lock``). A folder this call had to create
    is removed again if nothing else was put in it (e.g. the data failed to load)."""
    if out_dir is None:
        yield
        return
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the run folder {out_dir}: {error.strerror or error}") from error
    try:
        with folder_lock(out_dir, "run folder"):
            yield
    finally:
        if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:
            (out_dir / LOCK_FILE).unlink()
            out_dir.rmdir()


def prepare_out_dir(
    out_dir: Path, config: RunConfig, pairs: list[tuple[str, int]], resume: bool = False
) -> dict[tuple[str, int], dict[str, Any]]:
    """Make ``out_dir`` ready and return the checkpoints to resume from, by (strategy, trial).

    - A new folder (or one where nothing finished yet) gets config.toml and starts fresh.
    - ``resume``: the configuration must be the one in the folder (slice keys aside); results.jsonl
      is repaired to agree with the checkpoints, and each (strategy, trial) continues after its
      last finished round.
    - Otherwise the folder may only be joined by another slice of the same run (other strategies
      or trials, e.g. from another machine); anything else is refused, nothing is overwritten.
    """
    results = out_dir / RESULTS_FILE
    checkpoints = (
        {pair: state for pair in pairs if (state := load_checkpoint(out_dir, *pair)) is not None}
        if out_dir.exists()
        else {}
    )
    started = (results.exists() and results.stat().st_size > 0) or bool(list(out_dir.glob(f"{CHECKPOINT_DIR}/*.pt")))
    if not started:
        if resume:
            log.info("nothing to resume in %s; starting the run", out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the run folder {out_dir}: {error.strerror or error}") from error
        write_atomic(out_dir / CONFIG_FILE, to_toml(config))
        return {}
    config_file = out_dir / CONFIG_FILE
    if not config_file.exists():
        raise UserError(f"{out_dir} holds results but no {CONFIG_FILE}; choose a new --out")
    earlier_config = resolve(read_toml(config_file))
    earlier = without_slice(earlier_config)
    differing = sorted(k for k, v in without_slice(config).items() if earlier.get(k) != v)
    if differing:
        what = "--resume with a changed configuration" if resume else "a run with a different configuration"
        raise UserError(f"{out_dir} holds {what}: {', '.join(differing)} differ; choose a new --out")
    if resume:
        write_atomic(config_file, to_toml(earlier_config))  # in today's key names, if an older version wrote it
        with_rows = {(r["strategy"], r["trial"]) for r in read_rows(results)} if results.exists() else set()
        restarting = sorted(p for p in pairs if p in with_rows and p not in checkpoints)
        repair_results(out_dir, checkpoints, restarting)
        return checkpoints
    done = {(row["strategy"], row["trial"]) for row in read_rows(results)} if results.exists() else set()
    overlap = sorted(set(pairs) & (done | set(checkpoints)))
    if overlap:
        names = ", ".join(f"{s} trial {t}" for s, t in overlap[:4])
        raise UserError(f"{out_dir} already holds results for {names}; add --resume to continue the run")
    return {}


class RunFolderRecorder:
    """The observer that writes one (strategy, trial)'s rounds into the run folder.

    Per round: artifacts (with ``save_artifacts``, at the first, middle and last round), then the
    checkpoint (every row so far, the pool and, unless it was the last round, the weights), and
    only then the results row, so a kill between the two loses nothing.
    """

    def __init__(
        self, out_dir: Path, config: RunConfig, dataset: Dataset, num_rounds: int, earlier_rows: list[dict[str, Any]]
    ) -> None:
        self.out_dir, self.config, self.dataset, self.num_rounds = out_dir, config, dataset, num_rounds
        self.rows = list(earlier_rows)  # this pair's rows from before a resume

    def round_finished(self, record: RoundRecord, learner: Learner) -> None:
        if self.config.save_artifacts and record.round in artifacts.artifact_rounds(self.num_rounds):
            trained_on = (learner.pool.labeled_at >= 0) & (learner.pool.labeled_at <= record.round)
            found = artifacts.collect(
                learner.model,
                self.dataset,
                torch.nonzero(trained_on).flatten(),
                torch.nonzero(~trained_on).flatten(),
                derive_seed(self.config.seed, 0, SEED_ARTIFACTS),
                self.config.train.eval_batch_size,
            )
            artifacts.save(self.out_dir, record.strategy, record.trial, record.round, found)
        row = record.to_row()
        self.rows.append(row)
        state: dict[str, Any] = {
            "round": record.round,
            "labeled_at": learner.pool.labeled_at.clone(),
            "rows": self.rows,
        }
        if learner.stop_predictions is not None:  # the next round's kappa compares against these
            state["stop_predictions"] = learner.stop_predictions.clone()
        if record.round + 1 < self.num_rounds:  # weights are only needed to continue
            state["weights"] = model_state(learner.model, learner.aux_model, architecture(self.config, self.dataset))
        save_checkpoint(checkpoint_path(self.out_dir, record.strategy, record.trial), state)
        append_row(self.out_dir / RESULTS_FILE, row)
