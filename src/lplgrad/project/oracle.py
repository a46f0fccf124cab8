"""The labeling project's oracle: a person, who gets a batch to label.

``PersonBatch.receive`` is handed a round's choice by ``core.round.run_round`` and writes, in this
order, the round's model file, its batch folder (batch.csv, label-studio.json and the labeling
config) and then, in one transaction, the round's record and its queried images. A kill before the
transaction leaves the project as it was (files of an unrecorded round are simply rewritten by the
next query); after it, the round is complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lplgrad.core.records import Measured
from lplgrad.core.round import Models, RoundInputs, RoundOutcome
from lplgrad.models.build import architecture
from lplgrad.models.model_file import save_models
from lplgrad.project import db
from lplgrad.project.exchange import BatchItem, batch_csv, label_studio_config, label_studio_tasks
from lplgrad.quality.calibration import calibrated
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.train.inference import predict

log = logging.getLogger(__name__)


def batch_folder(project: Path, round_index: int) -> Path:
    return project / "batches" / f"round-{round_index}"


@dataclass
class PersonBatch:
    """Writes a round's batch for a person, and records the round (see the module docstring)."""

    project: Path
    conn: Any  # the project's open database connection (the caller holds the project lock)
    candidates: list[db.ImageRow]  # row of each candidate, in the order of the round's candidate indices
    first_candidate: int  # the train index of candidates[0]
    classes: list[str]
    strategy: str
    labeled_count: int  # labeled pool images the round read (held-out ones included)
    accuracy_on: str | None  # "test", "holdout" or None
    url_prefix: str
    started: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    items: list[BatchItem] = field(default_factory=list)
    stop_ids: list[int] = field(default_factory=list)  # image ids of the round's stop set, in its order
    stop_predicted: list[int] = field(default_factory=list)
    # image id -> ids of its exact and near duplicates among the candidates: one batch holds one of them
    copies: dict[int, set[int]] = field(default_factory=dict)

    def receive(self, inputs: RoundInputs, outcome: RoundOutcome, models: Models) -> None:
        """The round's picks, with the model's suggested class and its confidence, calibrated by the
        temperature fitted on the measured images (1 when there are too few of them)."""
        query = outcome.query
        temperature = outcome.assessment.temperature or 1.0
        logits = predict(models.model, inputs.dataset, query.selected, inputs.config.train.eval_batch_size)["logits"]
        probabilities = calibrated(logits, temperature).cpu()
        confidence, suggested = probabilities.max(dim=1)
        scores = [None] * query.selected.numel() if query.scores is None else query.scores.tolist()
        picked = [self.candidates[i - self.first_candidate] for i in query.selected.tolist()]
        kept: list[BatchItem] = []
        for pick, (row, score) in enumerate(zip(picked, scores, strict=True)):
            if any(item.image_id in self.copies.get(row.id, ()) for item in kept):
                log.info("%s left out of the batch: a near duplicate of an image already in it", row.path)
                continue
            kept.append(
                BatchItem(
                    row.id, row.path, self.classes[int(suggested[pick])], float(confidence[pick]), score, len(kept) + 1
                )
            )
        self.items = kept
        if outcome.assessment.stop_predictions is not None:
            self.stop_predicted = outcome.assessment.stop_predictions.tolist()
        model_file = f"models/round-{inputs.round_index}.pt"
        architecture_now = architecture(inputs.config, inputs.dataset)
        save_models(self.project / model_file, models.model, models.aux_model, architecture_now)
        self.record(inputs.round_index, model_file, Measured.of(outcome))

    def record(self, round_index: int, model_file: str | None = None, measured: Measured | None = None) -> Path:
        """Write the batch folder, then the round and its queried images in one transaction."""
        folder = batch_folder(self.project, round_index)
        write_atomic(folder / "batch.csv", batch_csv(self.items))
        tasks = label_studio_tasks(self.items, f"lplgrad-round-{round_index}", self.url_prefix)
        write_atomic(folder / "label-studio.json", tasks)
        write_atomic(folder / "label-studio-config.xml", label_studio_config(self.classes))
        row = db.RoundRow(
            round=round_index,
            strategy=self.strategy,
            model_file=model_file,
            labeled=self.labeled_count,
            queried=len(self.items),
            accuracy_on=self.accuracy_on,
            started=self.started,
            finished=datetime.now(UTC).isoformat(),
            measured=measured,
        )
        queried: list[tuple[object, ...]] = [
            (i.image_id, i.rank, i.score, i.suggested_label, i.confidence) for i in self.items
        ]
        with db.transaction(self.conn):
            db.add_round(self.conn, row, queried, list(zip(self.stop_ids, self.stop_predicted, strict=False)))
        return folder


class NoOracle:
    """Under torchrun, the processes other than rank 0 help train and score and write nothing."""

    def receive(self, inputs: RoundInputs, outcome: RoundOutcome, models: Models) -> None:
        return None
