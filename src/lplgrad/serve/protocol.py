"""Label Studio's ML backend protocol, as pure functions over its JSON bodies.

What Label Studio 1.23.2 sends (``label_studio/ml/api_connector.py``; bodies recorded in
tests/fixtures/label-studio-ml/): ``/setup`` the project (``"<id>.<created timestamp>"``), its label
config (``schema``), its own URL and an API token; ``/predict`` the tasks and the label config;
``/webhook`` an ``action`` with, for annotations, the annotation and its task (``ANNOTATIONS_DELETED``
carries only the ids), for ``START_TRAINING`` only the project; ``/train`` (older servers) the
annotated tasks. Nothing here touches the project: bodies in, records and result dicts out; a body
of the wrong shape is a UserError naming the field.
"""

from __future__ import annotations

import unicodedata
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, replace
from typing import Any

from lplgrad.errors import UserError, quoted
from lplgrad.project.answers import SOURCE
from lplgrad.project.exchange import LabelRecord, _full_json_task

MAX_CONFIG = 100_000  # characters of a label config: a real one is a few hundred


@dataclass(frozen=True)
class LabelConfig:
    """The names a prediction must use, read from the project's label config."""

    choices: str  # the Choices' name: a result's from_name
    image: str  # the Image's name: a result's to_name
    data_key: str  # the task data field holding the image URL ("image" for value="$image")


@dataclass(frozen=True)
class Setup:
    """What ``/setup`` says: which Label Studio project, its config, and how to call Label Studio back."""

    project: int
    label_config: str
    hostname: str | None
    access_token: str | None


def parse_label_config(text: Any, classes: list[str]) -> LabelConfig:
    """One ``Image`` and one ``Choices`` on it whose ``Choice`` values are the project's classes;
    anything else is a UserError that says what the config must hold."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("the label config is missing")
    if len(text) > MAX_CONFIG:
        raise UserError(f"the label config is over {MAX_CONFIG} characters")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as error:
        raise UserError(f"the label config is not valid XML: {error}") from None
    images = [e for e in root.iter() if e.tag == "Image"]
    choices = [e for e in root.iter() if e.tag == "Choices"]
    wanted = "one <Image> and one <Choices> with a <Choice> per project class (" + ", ".join(classes) + ")"
    if len(images) != 1 or len(choices) != 1:
        raise UserError(f"the label config has {len(images)} Image and {len(choices)} Choices; lplgrad needs {wanted}")
    image, control = images[0], choices[0]
    name, value, to_name = image.get("name"), image.get("value") or "", control.get("toName")
    if not name or not value.startswith("$") or to_name != name:
        raise UserError(f"the label config's Choices must name its Image (toName={name!r}), whose value is $field")
    given = [unicodedata.normalize("NFC", (c.get("value") or "").strip()) for c in control.iter("Choice")]
    if sorted(given) != sorted(classes):
        raise UserError(f"the label config's choices are {', '.join(given) or 'none'}; lplgrad needs {wanted}")
    return LabelConfig(str(control.get("name")), name, value[1:])


def parse_setup(body: dict[str, Any]) -> Setup:
    """The ``/setup`` body; the token is kept only to call Label Studio's API back."""
    hostname, token = body.get("hostname"), body.get("access_token")
    return Setup(
        project_id(body.get("project")),
        body.get("schema") or "",
        hostname if isinstance(hostname, str) and hostname else None,
        token if isinstance(token, str) and token else None,
    )


def project_id(value: Any) -> int:
    """Label Studio's project id: an integer, a project object's ``id``, or the ``"7.1796157337"``
    (id.creation time) the backend calls carry."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str) and value.split(".", 1)[0].isdigit():
        value = int(value.split(".", 1)[0])
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"expected a Label Studio project id, got {quoted(value)}")
    return value


def tasks_of(body: dict[str, Any], key: str = "tasks") -> list[dict[str, Any]]:
    """The body's list of tasks, each an object with an integer ``id`` and a ``data`` object."""
    tasks = body.get(key)
    if not isinstance(tasks, list):
        raise UserError(f"expected {key!r}: a list of Label Studio tasks")
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise UserError(f"task {number} of {key!r} has no data object")
    return tasks


def task_data(task: dict[str, Any], config: LabelConfig) -> dict[str, Any]:
    """The fields lplgrad matches an image by, under the names ``exchange`` reads: ``lplgrad_id``,
    and the image URL (``data.image``, or the field the config's Image reads)."""
    data = task.get("data") or {}
    found = {"image": data.get(config.data_key, data.get("image"))}
    if "lplgrad_id" in data:
        found["lplgrad_id"] = data["lplgrad_id"]
    return {k: v for k, v in found.items() if v is not None}


def task_records(task: dict[str, Any], config: LabelConfig, annotations: list[Any] | None = None) -> list[LabelRecord]:
    """One LabelRecord per annotation of a task (a cancelled one has label None), or one with label None
    for a task nobody answered: ``exchange``'s reading of an exported task, with ``source`` label-studio.
    A task of another shape is a UserError that names it (as ``exchange.parse_file`` makes it)."""
    where = f"Label Studio task {quoted(task.get('id'))}"
    given = task.get("annotations") if annotations is None else annotations
    if given is not None and not (isinstance(given, list) and all(isinstance(a, dict) for a in given)):
        raise UserError(f"{where}: annotations must be a list of objects")
    try:
        exported = {"data": task_data(task, config), "annotations": given or []}
        return [replace(r, source=SOURCE) for r in _full_json_task(exported, where)]
    except (AttributeError, TypeError, KeyError) as error:  # e.g. a result whose value is no object
        raise UserError(f"{where} is not a Label Studio task of the expected shape: {error}") from None


def newest_answer(records: list[LabelRecord]) -> LabelRecord | None:
    """A task's current answer: its newest annotation that chose a class (skips are no answer)."""
    answered = [r for r in records if r.label is not None]
    return max(answered, key=lambda r: r.time or "") if answered else None


def annotation_of(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(annotation, task) of an ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` webhook."""
    annotation, task = body.get("annotation"), body.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise UserError(f"{body.get('action')}: expected an annotation object and its task with data")
    return annotation, task


def prediction(config: LabelConfig, label: str | None, score: float, version: str) -> dict[str, Any]:
    """One task's prediction: the suggested class as a ``choices`` result (none without a model), a
    score, and the model version Label Studio files it under."""
    result = [] if label is None else [_choice(config, label)]
    return {"model_version": version, "score": score, "result": result}


def new_task(config: LabelConfig, image_id: int, url: str, predicted: dict[str, Any] | None) -> dict[str, Any]:
    """A task as ``lplgrad push`` imports it: the image's URL under the config's field and its
    ``lplgrad_id`` (``exchange.label_studio_tasks``' shape), with a ``prediction`` when there is one."""
    task: dict[str, Any] = {"data": {config.data_key: url, "lplgrad_id": image_id}}
    if predicted is not None:
        task["predictions"] = [predicted]
    return task


def _choice(config: LabelConfig, label: str) -> dict[str, Any]:
    return {
        "from_name": config.choices,
        "to_name": config.image,
        "type": "choices",
        "value": {"choices": [label]},
    }
