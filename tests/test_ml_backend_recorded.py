"""The bodies a real Label Studio 1.23.2 sent ``lplgrad serve`` in the live test
(tests/test_ml_backend_live.py, recorded with LPLGRAD_RECORD_FIXTURES=1 into
tests/fixtures/label-studio-ml/live-*.json), replayed against the same project rebuilt here: 24
synthetic images (``make_images``), the first 6 labeled by a CSV."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from lplgrad.project import db, workflow
from lplgrad.project.answers import record_answer
from lplgrad.project.query import query
from lplgrad.serve.app import ServeOptions, create_app
from lplgrad.serve.protocol import parse_label_config, task_records
from lplgrad.serve.webhook import Connections, Webhooks
from tests.helpers import CLASSES, make_images

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio-ml"
TINY = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}


def recorded(kind: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"live-{kind}.json").read_text())


@pytest.fixture
def live(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The live test's project: same images, same ids, same CSV labels."""
    truth = make_images(tmp_path / "images", 24)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in list(truth.items())[:6]))
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "images", CLASSES, labels_csv=labels, settings=TINY)
    return project, truth


def label_of(project: Path, image: int) -> tuple[str, str] | None:
    conn = db.connect(project, readonly=True)
    try:
        found = db.label_of(conn, image)
    finally:
        conn.close()
    return None if found is None else (str(found["label"]), str(found["source"]))


def test_recorded_setup_and_predict(live: tuple[Path, dict[str, str]]) -> None:
    project, _ = live
    client = TestClient(create_app(project, ServeOptions(refresh=False)), base_url="http://127.0.0.1")
    assert client.post("/setup", json=recorded("setup")).json() == {"model_version": "lplgrad-untrained"}
    body = recorded("predict")  # a task named by path only, and one of an image lplgrad does not have
    assert client.post("/predict", json=body).json()["results"] == [[], []]
    query(project, k=5)
    answer = client.post("/predict", json=body).json()
    first, unknown = answer["results"]
    assert answer["model_version"] == "lplgrad-round-1" and unknown == []
    (choice,) = first["result"]
    assert (choice["from_name"], choice["to_name"], choice["type"]) == ("class", "img", "choices")
    assert choice["value"]["choices"][0] in CLASSES and 0 <= first["score"] <= 1  # labeled: not in the batch


def test_recorded_annotation_webhooks(live: tuple[Path, dict[str, str]]) -> None:
    project, _ = live
    client = TestClient(create_app(project, ServeOptions(train_every=0)), base_url="http://127.0.0.1")
    created, updated = recorded("webhook-annotation-created"), recorded("webhook-annotation-updated")
    image = created["task"]["data"]["lplgrad_id"]
    first = created["annotation"]["result"][0]["value"]["choices"][0]
    assert client.post("/webhook", json=created).json()["change"] == "labeled"
    assert label_of(project, image) == (first, "label-studio")
    assert updated["task"]["data"]["lplgrad_id"] == image  # the live test changed its first answer
    assert client.post("/webhook", json=updated).json()["change"] == "relabeled"
    assert label_of(project, image) == (updated["annotation"]["result"][0]["value"]["choices"][0], "label-studio")
    assert client.post("/webhook", json=recorded("webhook-tasks-created")).json()["status"] == "ignored"


class FakeLabelStudio:
    """Label Studio's API as the live run left it (live-api-tasks.json)."""

    def project(self, project: int) -> dict[str, Any]:
        return recorded("webhook-start-training")["project"]

    def tasks(self, project: int, annotations: bool = True) -> list[dict[str, Any]]:
        return list(recorded("api-tasks")["tasks"])


class FakeConnections(Connections):
    def client(self, project: int) -> Any:
        return FakeLabelStudio()


class CountingLearner:
    def __init__(self) -> None:
        self.labels = 0
        self.trained = threading.Event()

    def labeled(self, count: int) -> None:
        self.labels += count

    def train(self, why: str) -> bool:
        self.trained.set()
        return True


def test_recorded_deletion_and_start_training_sync_through_the_api(live: tuple[Path, dict[str, str]]) -> None:
    project, truth = live
    learner = CountingLearner()
    hooks = Webhooks(project, learner, FakeConnections())  # type: ignore[arg-type]
    tasks = recorded("api-tasks")["tasks"]
    config = parse_label_config(recorded("setup")["schema"], CLASSES)
    answered = [t for t in tasks if t["annotations"] and "lplgrad_id" in t["data"]]
    unanswered = [t for t in tasks if not t["annotations"] and "lplgrad_id" in t["data"]]
    assert answered and unanswered  # the deleted annotation's task is left without one
    gone = task_records(unanswered[0], config, [recorded("webhook-annotation-created")["annotation"]])[0]
    record_answer(project, 1, gone)  # as the webhook wrote it before the deletion
    deleted = recorded("webhook-annotations-deleted")
    assert deleted["annotations"] == [{"id": deleted["annotations"][0]["id"]}]  # ids only: read the API back
    assert hooks.handle(deleted) == {"status": "accepted", "action": "ANNOTATIONS_DELETED"}  # in the background
    assert hooks.idle.wait(30) and label_of(project, unanswered[0]["data"]["lplgrad_id"]) is None
    assert not learner.trained.is_set()  # a deletion syncs, it does not train
    record_answer(project, 1, gone)
    counts = hooks.sync(1)
    assert label_of(project, unanswered[0]["data"]["lplgrad_id"]) is None and counts.count("removed") == 1
    for task in answered:
        image = task["data"]["lplgrad_id"]
        assert label_of(project, image) == (task["annotations"][-1]["result"][0]["value"]["choices"][0], "label-studio")
    contradicted = [t for t in tasks if t["annotations"] and "lplgrad_id" not in t["data"]]
    assert len(counts.conflicts) == len(contradicted) == 1 and len(counts.unknown) == 1
    path = contradicted[0]["data"]["picture"].split("?d=", 1)[1]
    assert truth[path] in counts.conflicts[0]  # the CSV's label stays
    assert hooks.handle(recorded("webhook-start-training")) == {"status": "accepted", "action": "START_TRAINING"}
    assert learner.trained.wait(30)
