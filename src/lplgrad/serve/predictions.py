"""Label Studio tasks -> predictions: each task's image, the newest model's class for it, and its
priority score (``ranking``). Shared by ``/predict`` and ``lplgrad push``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError
from lplgrad.project import db
from lplgrad.project.answers import match_images
from lplgrad.project.exchange import LabelRecord
from lplgrad.project.suggest import Model, Snapshot, snapshot
from lplgrad.serve.protocol import LabelConfig, prediction, task_records
from lplgrad.serve.ranking import priority

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predicted:
    """Label Studio's ``results``, one entry per task (an empty list: no prediction for that task),
    and what happened, for the log."""

    results: list[Any]
    version: str
    unknown: list[str]  # why tasks got no prediction
    without_model: int  # tasks answered with a score only, or nothing (no trained model yet)


def predict_tasks(project: Path, model: Model, config: LabelConfig, tasks: list[dict[str, Any]]) -> Predicted:
    """One result per task, in the tasks' order (Label Studio pairs them by position)."""
    references: list[LabelRecord | str] = []
    for task in tasks:
        try:
            references.append(task_records(task, config, annotations=[])[0])
        except UserError as error:  # e.g. an lplgrad_id that is no integer: this task only
            references.append(str(error))
    matched = iter(match_images(project, [r for r in references if isinstance(r, LabelRecord)]))
    found = [next(matched) if isinstance(r, LabelRecord) else r for r in references]
    rows = [row for row in found if isinstance(row, db.ImageRow)]
    state = snapshot(project)
    predicted, unreadable = predict_rows(project, model, config, state, rows)
    results: list[Any] = []
    unknown: list[str] = []
    for task, row in zip(tasks, found, strict=True):
        if isinstance(row, str):
            unknown.append(f"task {task.get('id')}: {row}")
            results.append([])
        elif row.id in unreadable:
            unknown.append(f"task {task.get('id')}: {unreadable[row.id]}")
            results.append([])
        else:
            results.append(predicted.get(row.id, []))
    without = 0 if state.model_file else len(rows)
    return Predicted(results, state.version, unknown, without)


def predict_rows(
    project: Path, model: Model, config: LabelConfig, state: Snapshot, rows: list[db.ImageRow]
) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """(image id -> its prediction, image id -> why it has none: its file cannot be read) for the
    images there is something to say about: with a model, every readable one (the model's class and
    the score); without one (a cold start), only the batch's images (a score, no class)."""
    found = None if state.model_file is None else model.probabilities(state.model_file, rows)
    out: dict[int, dict[str, Any]] = {}
    size = len(state.batch)
    for row in rows:
        p = None if found is None else found.by_image.get(row.id)
        if found is not None and p is None:
            continue  # unreadable: no prediction rather than a guess
        score = priority(state.batch.get(row.id), size, p)
        if score is None:
            continue
        label = None if p is None or found is None else found.classes[max(range(len(p)), key=p.__getitem__)]
        out[row.id] = prediction(config, label, score, state.version)
    return out, {} if found is None else found.unreadable
