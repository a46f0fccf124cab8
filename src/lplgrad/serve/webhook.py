"""What ``lplgrad serve`` does with Label Studio's events (``/webhook``) and ``/train``.

- ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (the annotation and its task): the answer is
  written at once, in one transaction (``project.answers.record_answer``); a skip writes nothing, an
  update to a skip takes Label Studio's label back. A label another source wrote is a Conflict (409).
- ``ANNOTATIONS_CREATED`` (several at once, e.g. "predictions to annotations"): each written so.
- ``ANNOTATIONS_DELETED`` carries only annotation ids, so the project's tasks are read back through
  Label Studio's API and its labels made to match them (``sync``), in the background.
- ``START_TRAINING`` carries only the project: the same sync, then a round.
- ``/train`` (Label Studio before the START_TRAINING webhook) carries the annotated tasks: synced, then a round.
Other actions (tasks created, project updated, ...) are answered and ignored. A webhook must answer
within Label Studio's 1 s, so anything that calls Label Studio back runs in the background.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project.answers import SyncCounts, UnknownImage, record_answer, remove_answer, sync_answers
from lplgrad.project.suggest import snapshot
from lplgrad.serve.label_studio_api import LabelStudio, check_url
from lplgrad.serve.learner import Learner, in_background
from lplgrad.serve.protocol import (
    LabelConfig,
    Setup,
    annotation_of,
    newest_answer,
    parse_label_config,
    project_id,
    task_records,
    tasks_of,
)

log = logging.getLogger(__name__)

ANSWER_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


@dataclass
class Connections:
    """How to call each Label Studio project back: ``--label-studio-url`` / ``--api-key`` when given,
    else the hostname and token its ``/setup`` sent; and the label config /setup checked."""

    url: str | None = None
    key: str | None = None
    setups: dict[int, tuple[Setup, LabelConfig]] = field(default_factory=dict)
    projects: set[int] = field(default_factory=set)  # every Label Studio project heard from

    def remember(self, setup: Setup, config: LabelConfig) -> None:
        self.setups[setup.project] = (setup, config)
        self.projects.add(setup.project)

    def config(self, project: int) -> LabelConfig | None:
        return self.setups[project][1] if project in self.setups else None

    def client(self, project: int) -> LabelStudio:
        setup = self.setups[project][0] if project in self.setups else None
        url = self.url or (setup.hostname if setup else None)
        key = self.key or (setup.access_token if setup else None)
        if not url or not key:
            raise UserError(
                f"no way to read Label Studio project {project} back: connect the backend (its /setup sends "
                "Label Studio's URL and a token) or start lplgrad serve with --label-studio-url and --api-key"
            )
        return LabelStudio(check_url(url), key)


@dataclass
class Webhooks:
    project: Path
    learner: Learner
    connections: Connections

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        if not isinstance(action, str):
            raise UserError("a webhook body needs an action")
        if action in ANSWER_ACTIONS:
            return self._answer(action, body)
        if action == "ANNOTATIONS_CREATED":
            return self._answers(body)
        if action == "ANNOTATIONS_DELETED":
            ls_project = project_id(body.get("project"))
            in_background("sync after a deletion", lambda: self.sync(ls_project))
            return {"status": "accepted", "action": action}
        if action == "START_TRAINING":
            ls_project = project_id(body.get("project"))
            in_background("training", lambda: self._sync_and_train(ls_project, action))
            return {"status": "accepted", "action": action}
        return {"status": "ignored", "action": action}

    def train_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/train``: the annotated tasks, synced now (no call back), then a round."""
        tasks = tasks_of(body, "annotations")
        config = self._config(body.get("project"), body.get("label_config"))
        counts = self._apply(tasks, config)
        started = self.learner.train("/train")
        return {"status": "training" if started else "queued", **_summary(counts)}

    def sync(self, ls_project: int) -> SyncCounts:
        """Read every task of the Label Studio project and make the labels it wrote match them."""
        client = self.connections.client(ls_project)
        config = self._config(ls_project, client.project(ls_project)["label_config"])
        counts = self._apply(client.tasks(ls_project), config)
        log.info("synced Label Studio project %d: %s", ls_project, _described(counts))
        return counts

    def refresh(self) -> None:
        """After a round: every connected Label Studio project retrieves the new model's predictions
        and takes its version as the project's model version (so "Prediction score" sorts by it)."""
        version = snapshot(self.project).version
        for ls_project in sorted(self.connections.projects):
            try:
                client = self.connections.client(ls_project)
                client.retrieve_predictions(ls_project)
                client.select_model_version(ls_project, version)
                log.info("Label Studio project %d: predictions of %s retrieved and selected", ls_project, version)
            except UserError as error:
                log.warning("Label Studio project %d was not refreshed: %s", ls_project, error)

    def _sync_and_train(self, ls_project: int, why: str) -> None:
        """Sync first where Label Studio can be read back; train on what the project holds either way."""
        try:
            self.sync(ls_project)
        except UserError as error:
            log.warning("%s: the labels were not synced first: %s", why, error)
        self.learner.train(why)

    def _answer(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        annotation, task = annotation_of(body)
        config = self._config(body.get("project"), None)
        record = task_records(task, config, [annotation])[0]
        try:
            if record.label is None and action == "ANNOTATION_UPDATED":
                change = remove_answer(self.project, record)
            else:
                change = record_answer(self.project, record)
        except UnknownImage as error:
            log.warning("%s: task %s is not one of this project's images (%s); ignored", action, task.get("id"), error)
            return {"status": "ignored", "reason": str(error)}
        log.info("%s: image %d %s (%s -> %s)", action, change.image, change.what, change.before, change.after)
        if change.what == "labeled":
            self.learner.labeled(1)
        return {"status": "ok", "image": change.image, "label": change.after, "change": change.what}

    def _answers(self, body: dict[str, Any]) -> dict[str, Any]:
        annotations, tasks = body.get("annotation"), body.get("task")
        if not isinstance(annotations, list) or not isinstance(tasks, list):
            raise UserError("ANNOTATIONS_CREATED: expected lists of annotations and tasks")
        by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
        config = self._config(body.get("project"), None)
        pairs = []
        for annotation in annotations:
            task = by_id.get(annotation.get("task")) if isinstance(annotation, dict) else None
            if task is None:
                raise UserError(f"ANNOTATIONS_CREATED: no task for annotation {quoted(annotation)}")
            pairs.append({**task, "annotations": [annotation]})
        return {"status": "ok", **_summary(self._apply(pairs, config))}

    def _apply(self, tasks: list[dict[str, Any]], config: LabelConfig) -> SyncCounts:
        items = []
        for task in tasks:
            records = task_records(task, config)
            items.append((records[0], newest_answer(records)))
        counts = sync_answers(self.project, items)
        for problem in counts.conflicts:
            log.warning("not written: %s", problem)
        for problem in counts.unknown:
            log.warning("ignored: %s", problem)
        if counts.count("labeled"):
            self.learner.labeled(counts.count("labeled"))
        return counts

    def _config(self, ls_project: Any, label_config: Any) -> LabelConfig:
        """The label config of a body (its project's, else the one given), else the one /setup checked."""
        if ls_project is not None:
            self.connections.projects.add(project_id(ls_project))
        if isinstance(ls_project, dict) and isinstance(ls_project.get("label_config"), str):
            label_config = ls_project["label_config"]
        if isinstance(label_config, str):
            return parse_label_config(label_config, snapshot(self.project).classes)
        remembered = self.connections.config(project_id(ls_project))
        if remembered is None:
            raise UserError("no label config in the body and none from /setup for this project")
        return remembered


def _described(counts: SyncCounts) -> str:
    return ", ".join(f"{n} {what}" for what, n in _summary(counts).items() if n) or "nothing to do"


def _summary(counts: SyncCounts) -> dict[str, int]:
    kinds = ("labeled", "relabeled", "removed", "unchanged", "kept", "skipped")
    return {
        **{k: counts.count(k) for k in kinds},
        "conflicts": len(counts.conflicts),
        "unknown": len(counts.unknown),
    }
