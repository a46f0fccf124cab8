"""``lplgrad serve`` as the ML backend of a real Label Studio (marked ``labelstudio``, not in the default run).

    python3 -m venv /tmp/lsvenv && /tmp/lsvenv/bin/pip install label-studio==1.23.2
    LPLGRAD_LABEL_STUDIO=/tmp/lsvenv/bin/label-studio pytest -m labelstudio tests/test_ml_backend_live.py

Starts Label Studio once on 127.0.0.1 (``ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false``: else it
refuses a backend on a loopback address) and ``lplgrad serve`` (with basic auth) for a project of 24
synthetic images, 6 labeled, one round trained. Through Label Studio's API only: connect the backend,
``lplgrad push`` the unlabeled images, check the Data Manager's sort by prediction score is lplgrad's
order, import two more tasks and retrieve their predictions, annotate three tasks (the labels land by
webhook, a round trains, Label Studio gets the new model's predictions and order), update, delete and
contradict an annotation, and train by START_TRAINING. With LPLGRAD_RECORD_FIXTURES=1 the bodies Label
Studio sent are copied into tests/fixtures/label-studio-ml/live-*.json for tests/test_ml_backend_recorded.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from lplgrad.project import db, workflow
from lplgrad.project.query import query
from lplgrad.serve.record import redact
from tests.helpers import CLASSES, make_images

pytestmark = pytest.mark.labelstudio
TOKEN = "lplgrad-live-test-token"
AUTH = ("lplgrad", "live-test-secret")
FIXTURES = Path(__file__).parent / "fixtures" / "label-studio-ml"
CONFIG = (
    '<View><Image name="img" value="$picture"/><Choices name="class" toName="img">'
    + "".join(f'<Choice value="{c}"/>' for c in CLASSES)
    + "</Choices></View>"
)
TINY = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}


@dataclass(frozen=True)
class LabelStudio:
    base: str
    images: Path
    log: Path

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return _call(self.base + path, method, body, f"Token {TOKEN}")


def _call(url: str, method: str = "GET", body: Any = None, authorization: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if authorization:
        request.add_header("Authorization", authorization)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=120) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], seconds: float = 120, log: Path | None = None) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except (OSError, urllib.error.URLError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    binary = os.environ.get("LPLGRAD_LABEL_STUDIO")
    if not binary or not Path(binary).exists():
        pytest.skip("set LPLGRAD_LABEL_STUDIO to a label-studio executable (see this file's docstring)")
    root = tmp_path_factory.mktemp("label-studio")
    images, data, log = root / "images", root / "data", root / "label-studio.log"
    images.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "ML_BLOCK_LOCAL_IP": "false",  # else: "URL resolves to a reserved network address (block: 127.0.0.0/8)"
        "SSRF_PROTECTION_ENABLED": "false",  # else the calls after the connection are blocked too
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(images),
    }
    command = [binary, "start", "--internal-host", "127.0.0.1", "--port", str(port), "--host"]
    command += [f"http://127.0.0.1:{port}", "--no-browser", "--data-dir", str(data)]
    command += ["--username", "lplgrad@example.com", "--password", "lplgrad-live-test", "--user-token", TOKEN]
    command += ["--enable-legacy-api-token"]
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    studio = LabelStudio(f"http://127.0.0.1:{port}", images, log)
    try:
        wait_for("Label Studio to start", lambda: studio.call("GET", "/api/projects") is not None, 300, log)
        yield studio
    finally:
        server.terminate()
        server.wait(timeout=30)


@dataclass(frozen=True)
class Backend:
    project: Path
    url: str
    log: Path
    record: Path  # the bodies Label Studio sent (serve --record)
    truth: dict[str, str]  # image path -> its class


@pytest.fixture
def backend(tmp_path: Path, label_studio: LabelStudio) -> Iterator[Backend]:
    """A project (24 images, 6 labeled by a CSV, round 1 trained) and ``lplgrad serve`` for it."""
    truth = make_images(label_studio.images, 24)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in list(truth.items())[:6]))
    project = tmp_path / "project"
    workflow.init(project, label_studio.images, CLASSES, labels_csv=labels, settings=TINY)
    query(project, k=5)
    port, log, record = free_port(), tmp_path / "serve.log", tmp_path / "record"
    command = [sys.executable, "-m", "lplgrad", "serve", str(project), "--port", str(port), "--k", "5"]
    command += ["--train-every", "3", "--record", str(record)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LPLGRAD_SERVE_BASIC_AUTH": ":".join(AUTH)}
    with log.open("w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("lplgrad serve", lambda: _call(url + "/health", authorization=basic()) is not None, 120, log)
        yield Backend(project, url, log, record, truth)
    finally:
        server.terminate()
        server.wait(timeout=30)


def basic() -> str:
    return "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()


def test_label_studio_runs_the_loop_through_lplgrad_serve(label_studio: LabelStudio, backend: Backend) -> None:
    project, url, log, truth, ls = backend.project, backend.url, backend.log, backend.truth, label_studio
    ls_project = ls.call("POST", "/api/projects", {"title": "lplgrad serve", "label_config": CONFIG})["id"]
    connected = ls.call(
        "POST",
        "/api/ml",
        {"url": url, "project": ls_project, "title": "lplgrad", "auth_method": "BASIC_AUTH"}
        | {"basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1]},
    )
    assert connected["state"] == "CO" and connected["model_version"] == "lplgrad-round-1", connected
    refused = refused_connection(ls, url)  # a config whose choices are not the project's classes
    assert "400 Client Error" in refused and "choices are red, green" in log.read_text()
    hooks = ls.call("GET", f"/api/webhooks?project={ls_project}")
    (hook,) = [h for h in hooks if h["url"] == url + "/webhook"]  # made by Label Studio for the backend
    ls.call("PATCH", f"/api/webhooks/{hook['id']}", {"headers": {"Authorization": basic()}})

    # push the 18 unlabeled images with round 1's predictions: the Data Manager sorts them as lplgrad does
    personal_token = ls.call("POST", "/api/token/")["token"]  # a personal access token (a JWT), not the legacy one
    pushed = subprocess.run(
        [sys.executable, "-m", "lplgrad", "push", str(project), "--label-studio-url", ls.base, *push_to(ls_project)],
        env={**os.environ, "LABEL_STUDIO_API_KEY": personal_token, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pushed.returncode == 0 and "18 task(s) sent" in pushed.stdout and "18 with a prediction" in pushed.stdout
    assert ls.call("GET", f"/api/projects/{ls_project}")["model_version"] == "lplgrad-round-1"
    order = sorted_by_score(ls, ls_project)
    assert [t["data"]["lplgrad_id"] for t in order[:5]] == batch_of(project, 1)

    # two tasks Label Studio got elsewhere: one named by path only, one of an image lplgrad does not have
    known_path = next(iter(truth))  # labeled by the CSV
    extra = [{"data": {"picture": "/data/local-files/?d=" + quote(known_path)}}]
    extra.append({"data": {"picture": "/data/local-files/?d=elsewhere/x.png"}})
    ls.call("POST", f"/api/projects/{ls_project}/import", extra)
    retrieve = f"/api/dm/actions?id=retrieve_tasks_predictions&project={ls_project}"
    ls.call("POST", retrieve, {"selectedItems": {"all": True, "excluded": []}})
    tasks = {task_key(t): t for t in all_tasks(ls, ls_project)}
    assert versions(tasks[known_path]) == ["lplgrad-round-1"] and versions(tasks["elsewhere/x.png"]) == []
    assert "no prediction for task" in log.read_text()

    # annotate the first three of lplgrad's order: the labels land by webhook and round 2 trains
    firsts = order[:3]
    annotations = [annotate(ls, task, truth[path_of(task)]) for task in firsts]
    for task in firsts:
        image = task["data"]["lplgrad_id"]
        label = wait_for("the label by webhook", lambda image=image: label_of(project, image), 30, log)
        expected = (truth[path_of(task)], "label-studio", f"ls:{ls_project}:1")  # this project's user 1
        assert (label["label"], label["source"], label["annotator"]) == expected
    wait_for("round 2 and its predictions", lambda: model_version(ls, ls_project) == "lplgrad-round-2", 180, log)
    before = {task_key(t): score_of(t, "lplgrad-round-1") for t in order}
    order = sorted_by_score(ls, ls_project)
    assert [t["data"]["lplgrad_id"] for t in order[:5]] == batch_of(project, 2)
    after = {task_key(t): score_of(t, "lplgrad-round-2") for t in order}
    assert None not in after.values() and any(before[k] != after[k] for k in before)  # the new model's scores

    # an update relabels, a deletion takes the label back, a contradiction of the CSV's label is refused
    first, second = firsts[0], firsts[1]
    wrong = next(c for c in CLASSES if c != truth[path_of(first)])
    ls.call("PATCH", f"/api/annotations/{annotations[0]['id']}", {"result": choice(wrong)})
    wait_for(
        "the update", lambda: (label_of(project, first["data"]["lplgrad_id"]) or {}).get("label") == wrong, 30, log
    )
    ls.call("DELETE", f"/api/annotations/{annotations[1]['id']}")
    wait_for("the deletion", lambda: label_of(project, second["data"]["lplgrad_id"]) is None, 60, log)
    csv_label = truth[known_path]
    annotate(ls, tasks[known_path], next(c for c in CLASSES if c != csv_label))
    wait_for("the refusal", lambda: "409" in log.read_text() or "not written" in log.read_text(), 30, log)
    assert label_of_path(project, known_path) == (csv_label, "csv")

    # START_TRAINING (Label Studio's "Start training") syncs through the API and trains round 3
    (ml,) = ls.call("GET", f"/api/ml?project={ls_project}")
    ls.call("POST", f"/api/ml/{ml['id']}/train")
    wait_for("round 3 by START_TRAINING", lambda: model_version(ls, ls_project) == "lplgrad-round-3", 180, log)
    assert len(rounds(project)) == 3
    involved = {t["id"] for t in firsts} | {tasks[known_path]["id"], tasks["elsewhere/x.png"]["id"]}
    record_fixtures(backend.record, ls, ls_project, involved)


# ---- helpers


def refused_connection(ls: LabelStudio, url: str) -> str:
    """What Label Studio answers when /setup refuses its label config."""
    two = CONFIG.replace('<Choice value="blue"/>', "")
    other = ls.call("POST", "/api/projects", {"title": "two classes", "label_config": two})
    body = {"url": url, "project": other["id"], "auth_method": "BASIC_AUTH"}
    try:
        ls.call("POST", "/api/ml", body | {"basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1]})
    except urllib.error.HTTPError as error:
        assert error.code == 400
        return error.read().decode()
    pytest.fail("Label Studio connected a backend whose /setup refused the config")


def push_to(ls_project: int) -> list[str]:
    return ["--ls-project", str(ls_project), "--all"]


def choice(label: str) -> list[dict[str, Any]]:
    return [{"from_name": "class", "to_name": "img", "type": "choices", "value": {"choices": [label]}}]


def annotate(ls: LabelStudio, task: dict[str, Any], label: str) -> dict[str, Any]:
    return ls.call("POST", f"/api/tasks/{task['id']}/annotations", {"result": choice(label)})


def all_tasks(ls: LabelStudio, ls_project: int) -> list[dict[str, Any]]:
    return ls.call("GET", f"/api/tasks?project={ls_project}&page_size=1000&fields=all&resolve_uri=false")["tasks"]


def sorted_by_score(ls: LabelStudio, ls_project: int) -> list[dict[str, Any]]:
    """The Data Manager's order when its "Prediction score" column is sorted descending."""
    ordering = quote(json.dumps({"ordering": ["-tasks:predictions_score"]}))
    path = f"/api/tasks?project={ls_project}&page_size=1000&fields=all&resolve_uri=false&query={ordering}"
    return [t for t in ls.call("GET", path)["tasks"] if "lplgrad_id" in t["data"]]


def model_version(ls: LabelStudio, ls_project: int) -> str:
    return str(ls.call("GET", f"/api/projects/{ls_project}")["model_version"])


def score_of(task: dict[str, Any], version: str) -> float | None:
    return next((p["score"] for p in task["predictions"] if p["model_version"] == version), None)


def versions(task: dict[str, Any]) -> list[str]:
    return [p["model_version"] for p in task["predictions"]]


def path_of(task: dict[str, Any]) -> str:
    return str(task["data"]["picture"]).split("?d=", 1)[1]


def task_key(task: dict[str, Any]) -> str:
    return path_of(task).replace("%2F", "/")


def batch_of(project: Path, round_index: int) -> list[int]:
    conn = db.connect(project, readonly=True)
    try:
        queried = db.queried_images(conn)
    finally:
        conn.close()
    return [q.image.id for q in queried if q.round == round_index]


def rounds(project: Path) -> list[dict[str, Any]]:
    conn = db.connect(project, readonly=True)
    try:
        return db.rounds(conn)
    finally:
        conn.close()


def label_of(project: Path, image: int) -> dict[str, Any] | None:
    conn = db.connect(project, readonly=True)
    try:
        return db.label_of(conn, image)
    finally:
        conn.close()


def label_of_path(project: Path, path: str) -> tuple[str, str] | None:
    conn = db.connect(project, readonly=True)
    try:
        (row,) = [r for r in db.images(conn) if r.path == path]
        label = db.label_of(conn, row.id)
    finally:
        conn.close()
    return None if label is None else (str(label["label"]), str(label["source"]))


def record_fixtures(recorded: Path, ls: LabelStudio, ls_project: int, involved: set[int]) -> None:
    """With LPLGRAD_RECORD_FIXTURES=1: the first body of each kind, and the annotated, contradicted and
    unknown tasks as the task list (``GET /api/tasks?fields=all``) shows them at the end."""
    if not os.environ.get("LPLGRAD_RECORD_FIXTURES"):
        return
    kinds = ["setup", "predict", "webhook-ANNOTATION_CREATED", "webhook-ANNOTATION_UPDATED"]
    kinds += ["webhook-ANNOTATIONS_DELETED", "webhook-START_TRAINING", "webhook-TASKS_CREATED"]
    for kind in kinds:
        first = min(recorded.glob(f"*-{kind}.json"))
        shutil.copyfile(first, FIXTURES / f"live-{kind.replace('_', '-').lower()}.json")
    tasks = [t for t in all_tasks(ls, ls_project) if t["id"] in involved]
    (FIXTURES / "live-api-tasks.json").write_text(json.dumps(redact({"tasks": tasks}), indent=2) + "\n")
