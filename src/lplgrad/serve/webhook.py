"""What ``lplgrad serve`` does with Label Studio's events (``/webhook``) and ``/train``.

- ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` (the annotation and its task): the answer is
  written at once, in one transaction (``project.answers.record_answer``); a skip writes nothing, an
  update to a skip takes this Label Studio project's label back. A label another source wrote is a
  Conflict (409).
- ``ANNOTATIONS_CREATED`` (several at once, e.g. "predictions to annotations"): each written so (a
  skip writes nothing); a task that cannot be read or written is counted and logged, the others go on.
- ``ANNOTATIONS_DELETED`` carries only annotation ids, so the project's tasks are read back through
  Label Studio's API and its labels made to match them (``sync``), in the background.
- ``START_TRAINING`` carries only the project: the same sync, then a round.
- ``/train`` (Label Studio before the START_TRAINING webhook) carries the annotated tasks: synced, then a round.
Other actions (tasks created, project updated, ...) are answered and ignored. A webhook must answer
within Label Studio's 1 s, so anything that calls Label Studio back runs in the background: one
sync at a time, in one thread; a sync asked for while one runs follows it (once, however often it
was asked). A label a webhook writes after a sync began reading Label Studio is newer than what that
sync read, and the sync leaves it as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project.answers import SyncCounts, UnknownImage, record_answer, remove_answer, sync_answers
from lplgrad.project.exchange import LabelRecord
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
SYNC_ACTIONS = ("ANNOTATIONS_DELETED", "START_TRAINING")
LOGGED = 3  # problems of one sync logged one by one; the rest as a count


@dataclass
class Connections:
    """How to call each Label Studio project back, the URL and the key always from one source:
    ``--label-studio-url`` with ``--api-key`` (the operator's), or else the token the project's
    ``/setup`` sent, at ``--label-studio-url`` when given, else at the hostname /setup sent. The
    operator's key never goes to a host a request names. And the label config /setup checked."""

    url: str | None = None
    key: str | None = None
    setups: dict[int, tuple[Setup, LabelConfig]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key and not self.url:
            raise UserError(
                "--api-key (or $LABEL_STUDIO_API_KEY) needs --label-studio-url: lplgrad sends the key only to the "
                "Label Studio you name, never to a hostname a request gives"
            )

    def remember(self, setup: Setup, config: LabelConfig) -> None:
        self.setups[setup.project] = (setup, config)

    @property
    def projects(self) -> list[int]:
        """The Label Studio projects that connected through ``/setup``: the ones refreshed after a round."""
        return sorted(self.setups)

    def config(self, project: int) -> LabelConfig | None:
        return self.setups[project][1] if project in self.setups else None

    def client(self, project: int) -> LabelStudio:
        if self.key and self.url:
            return LabelStudio(check_url(self.url), self.key)
        setup = self.setups[project][0] if project in self.setups else None
        url = self.url or (setup.hostname if setup else None)
        key = setup.access_token if setup else None
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
    idle: threading.Event = field(default_factory=threading.Event)  # set while no sync runs or waits
    _written: dict[int, float] = field(default_factory=dict)  # image id -> when a webhook last changed its label
    _wanted: dict[int, bool] = field(default_factory=dict)  # Label Studio project -> train after its sync
    _syncing: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.idle.set()

    def handle(self, body: dict[str, Any]) -> dict[str, Any]:
        action = body.get("action")
        if not isinstance(action, str):
            raise UserError("a webhook body needs an action")
        if action in ANSWER_ACTIONS:
            return self._answer(action, body)
        if action == "ANNOTATIONS_CREATED":
            return self._answers(body)
        if action in SYNC_ACTIONS:
            self.request_sync(project_id(body.get("project")), train=action == "START_TRAINING")
            return {"status": "accepted", "action": action}
        return {"status": "ignored", "action": action}

    def train_request(self, body: dict[str, Any]) -> dict[str, Any]:
        """``/train``: the annotated tasks, synced now (no call back), then a round."""
        since = time.monotonic()
        tasks = tasks_of(body, "annotations")
        ls_project = project_id(body.get("project"))
        config = self._config(body.get("project"), body.get("label_config"))
        counts = self._apply(ls_project, tasks, config, since)
        started = self.learner.train("/train")
        return {"status": "training" if started else "queued", **_summary(counts)}

    def request_sync(self, ls_project: int, train: bool) -> None:
        """Sync this Label Studio project in the background, then train if asked. One sync at a
        time: asked for while one runs, it follows that one (a deletion after the running sync read
        the tasks is seen by the next)."""
        with self._lock:
            self._wanted[ls_project] = self._wanted.get(ls_project, False) or train
            if self._syncing:
                log.info("Label Studio project %d: a sync is running; another follows it", ls_project)
                return
            self._syncing = True
            self.idle.clear()
        in_background("sync", self._drain)

    @property
    def syncing(self) -> bool:
        return not self.idle.is_set()

    def sync(self, ls_project: int) -> SyncCounts:
        """Read every task of the Label Studio project and make the labels it wrote match them."""
        client = self.connections.client(ls_project)
        since = time.monotonic()  # a label a webhook writes from now on is newer than what is read here
        config = self._config(ls_project, client.project(ls_project)["label_config"])
        counts = self._apply(ls_project, client.tasks(ls_project), config, since)
        log.info("synced Label Studio project %d: %s", ls_project, _described(counts))
        return counts

    def refresh(self) -> None:
        """After a round: every Label Studio project connected through /setup retrieves the new
        model's predictions and takes its version as the project's model version (so "Prediction
        score" sorts by it). Retrieving may outlast its timeout on a large project while Label
        Studio goes on; the version is selected either way."""
        version = snapshot(self.project).version
        for ls_project in self.connections.projects:
            try:
                client = self.connections.client(ls_project)
            except UserError as error:
                log.warning("Label Studio project %d was not refreshed: %s", ls_project, error)
                continue
            try:
                client.retrieve_predictions(ls_project)
            except UserError as error:
                log.warning("Label Studio project %d: retrieving the predictions of %s: %s", ls_project, version, error)
            try:
                client.select_model_version(ls_project, version)
                log.info("Label Studio project %d: predictions of %s retrieved and selected", ls_project, version)
            except UserError as error:
                log.warning("Label Studio project %d: %s was not selected: %s", ls_project, version, error)

    def _drain(self) -> None:
        """The sync thread: the syncs asked for, one after another, until none is left."""
        while True:
            with self._lock:
                if not self._wanted:
                    self._syncing = False
                    self.idle.set()
                    return
                ls_project, train = next(iter(self._wanted.items()))
                del self._wanted[ls_project]
            why = "START_TRAINING" if train else "a deletion"
            try:
                self.sync(ls_project)
            except UserError as error:
                log.warning("%s: Label Studio project %d was not synced: %s", why, ls_project, error)
            except Exception:  # the next sync, and the round, still run
                log.exception("%s: syncing Label Studio project %d failed", why, ls_project)
            if train:
                try:
                    self.learner.train(why)  # on what the project holds, synced or not
                except Exception:
                    log.exception("%s: the round did not start", why)

    def _answer(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        annotation, task = annotation_of(body)
        ls_project = project_id(body.get("project"))
        config = self._config(body.get("project"), None)
        record = task_records(task, config, [annotation])[0]
        try:
            if record.label is None and action == "ANNOTATION_UPDATED":
                change = remove_answer(self.project, ls_project, record, self._mark)
            else:
                change = record_answer(self.project, ls_project, record, self._mark)
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
        ls_project = project_id(body.get("project"))
        by_id = {t.get("id"): t for t in tasks if isinstance(t, dict)}
        config = self._config(body.get("project"), None)
        counts = SyncCounts()
        items: list[tuple[LabelRecord, LabelRecord | None]] = []
        for annotation in annotations:
            task = by_id.get(annotation.get("task")) if isinstance(annotation, dict) else None
            if task is None:
                counts.unknown.append(f"ANNOTATIONS_CREATED: no task for annotation {quoted(annotation)}")
                continue
            try:
                record = task_records(task, config, [annotation])[0]
            except UserError as error:
                counts.unknown.append(str(error))
                continue
            items.append((record, record))  # the answer itself: a skip writes nothing, as ANNOTATION_CREATED
        return {"status": "ok", **_summary(self._write(ls_project, items, counts, since=None, mark=True))}

    def _apply(self, ls_project: int, tasks: list[dict[str, Any]], config: LabelConfig, since: float) -> SyncCounts:
        """Make this Label Studio project's labels match ``tasks`` (read at ``since``)."""
        counts = SyncCounts()
        items: list[tuple[LabelRecord, LabelRecord | None]] = []
        for task in tasks:
            try:
                records = task_records(task, config)
            except UserError as error:  # this task only
                counts.unknown.append(str(error))
                continue
            items.append((records[0], newest_answer(records)))
        return self._write(ls_project, items, counts, since, mark=False)

    def _write(
        self,
        ls_project: int,
        items: list[tuple[LabelRecord, LabelRecord | None]],
        counts: SyncCounts,
        since: float | None,
        mark: bool,
    ) -> SyncCounts:
        keep = None if since is None else (lambda image: self._written.get(image, float("-inf")) >= since)
        done = sync_answers(self.project, ls_project, items, keep, self._mark if mark else None)
        counts.changes += done.changes
        counts.conflicts += done.conflicts
        counts.unknown += done.unknown
        _log_some("not written", counts.conflicts)
        _log_some("ignored", counts.unknown)
        if counts.count("labeled"):
            self.learner.labeled(counts.count("labeled"))
        return counts

    def _mark(self, image: int) -> None:
        """A webhook changes this image's label now (called inside its transaction, before the change)."""
        self._written[image] = time.monotonic()

    def _config(self, ls_project: Any, label_config: Any) -> LabelConfig:
        """The label config of a body (its project's, else the one given), else the one /setup checked."""
        if isinstance(ls_project, dict) and isinstance(ls_project.get("label_config"), str):
            label_config = ls_project["label_config"]
        if isinstance(label_config, str):
            return parse_label_config(label_config, snapshot(self.project).classes)
        remembered = self.connections.config(project_id(ls_project))
        if remembered is None:
            raise UserError("no label config in the body and none from /setup for this project")
        return remembered


def _log_some(what: str, problems: list[str]) -> None:
    """The first few problems one line each, then how many more (a project of foreign tasks logs a few lines)."""
    for problem in problems[:LOGGED]:
        log.warning("%s: %s", what, problem)
    if len(problems) > LOGGED:
        log.warning("%s: %d more task(s) like these", what, len(problems) - LOGGED)


def _described(counts: SyncCounts) -> str:
    return ", ".join(f"{n} {what}" for what, n in _summary(counts).items() if n) or "nothing to do"


def _summary(counts: SyncCounts) -> dict[str, int]:
    kinds = ("labeled", "relabeled", "removed", "unchanged", "kept", "skipped", "newer")
    return {
        **{k: counts.count(k) for k in kinds},
        "conflicts": len(counts.conflicts),
        "unknown": len(counts.unknown),
    }
