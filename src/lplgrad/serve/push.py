"""``lplgrad push``: a project's images into a Label Studio project as tasks, with predictions.

The current batch (the newest round's images by rank, then those left unlabeled from earlier rounds:
what the page shows), or with ``--all`` every unlabeled pool image. Each task is
``{"data": {<the Image's field>: local-files URL, "lplgrad_id": id}}`` with the newest model's
prediction and priority score (``serve.predictions``), so a team can start from an empty Label
Studio project; images already there as tasks (by ``lplgrad_id`` or path) are not sent again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lplgrad.errors import UserError
from lplgrad.project import db
from lplgrad.project.exchange import LOCAL_FILES_PREFIX, path_from_url
from lplgrad.project.labeling import current_batch
from lplgrad.project.suggest import Model, images_by_id, snapshot, unlabeled_pool
from lplgrad.serve.label_studio_api import LabelStudio
from lplgrad.serve.predictions import predict_rows
from lplgrad.serve.protocol import new_task, parse_label_config, task_data

CHUNK = 1000  # tasks per import call


@dataclass(frozen=True)
class Pushed:
    sent: int
    already: int  # images that were tasks of the Label Studio project already
    with_prediction: int
    version: str
    unreadable: int = 0  # images sent without a prediction: their files cannot be read now


def push(
    project: Path, client: LabelStudio, ls_project: int, everything: bool = False, url_prefix: str = LOCAL_FILES_PREFIX
) -> Pushed:
    state = snapshot(project)
    config = parse_label_config(client.project(ls_project)["label_config"], state.classes)
    rows = _images(project, everything)
    present = _present(client.tasks(ls_project, annotations=False), config)
    new = [row for row in rows if row.id not in present[0] and row.path not in present[1]]
    predicted, unreadable = predict_rows(project, Model(project), config, state, new)
    tasks = [new_task(config, row.id, url_prefix + quote(row.path), predicted.get(row.id)) for row in new]
    for start in range(0, len(tasks), CHUNK):
        client.import_tasks(ls_project, tasks[start : start + CHUNK])
    with_prediction = sum(1 for t in tasks if "predictions" in t)
    if with_prediction:  # the Data Manager's "Prediction score" reads the project's model version only
        client.select_model_version(ls_project, state.version)
    return Pushed(len(tasks), len(rows) - len(new), with_prediction, state.version, len(unreadable))


def _images(project: Path, everything: bool) -> list[db.ImageRow]:
    if everything:
        return unlabeled_pool(project)
    batch = [item["id"] for item in current_batch(project) if item["label"] is None]
    if not batch:
        raise UserError(f"{project} has no unlabeled images in a batch; run lplgrad query first, or push --all")
    return images_by_id(project, batch)


def _present(tasks: list[dict[str, Any]], config: Any) -> tuple[set[int], set[str]]:
    """The lplgrad ids and image paths the Label Studio project's tasks hold already."""
    ids: set[int] = set()
    paths: set[str] = set()
    for task in tasks:
        data = task_data(task, config)
        if isinstance(data.get("lplgrad_id"), int):
            ids.add(data["lplgrad_id"])
        if isinstance(data.get("image"), str):
            paths.add(path_from_url(data["image"]))
    return ids, paths
