"""``lplgrad serve`` (the Label Studio ML backend) and ``push``, in the default suite: the protocol's pure
functions, and the app through Starlette's test client with the bodies a real Label Studio 1.23.2 sent
(tests/fixtures/label-studio-ml/). The live round trip is tests/test_ml_backend_live.py."""

from __future__ import annotations

import base64
import copy
import json
import logging
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from lplgrad.cli.main import main
from lplgrad.errors import UserError
from lplgrad.project import db, labeling, suggest, workflow
from lplgrad.project.answers import sync_answers
from lplgrad.project.exchange import LabelRecord
from lplgrad.project.query import query
from lplgrad.project.settings import read_settings, write_settings
from lplgrad.serve import learner as learner_module
from lplgrad.serve.app import ServeOptions, create_app
from lplgrad.serve.learner import Learner
from lplgrad.serve.protocol import LabelConfig, parse_label_config, parse_setup, project_id, task_records
from lplgrad.serve.push import push
from lplgrad.serve.ranking import batch_score, priority, uncertainty
from lplgrad.serve.record import redact
from lplgrad.serve.webhook import Connections, Webhooks
from tests.helpers import CLASSES, make_images

FIXTURES = Path(__file__).parent / "fixtures" / "label-studio-ml"
TINY = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}
CONFIG = '<View><Image name="image" value="$image"/><Choices name="label" toName="image"><Choice value="red"/><Choice value="green"/></Choices></View>'  # noqa: E501


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The fixtures' project: x/a.png (id 1) and x/b.png (id 2), then ten more; classes red, green."""
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    names = ["x/a.png", "x/b.png", *[f"y/{i:02d}.png" for i in range(10)]]
    for number, name in enumerate(names):
        pixels = rng.integers(0, 60, (12, 12, 3)).astype(np.uint8)
        pixels[..., number % 2] += 150  # red, green, red, ...
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(images / name)
    project = tmp_path / "project"
    workflow.init(project, images, ["red", "green"], settings=TINY)
    return project


def client_for(project: Path, **options: Any) -> TestClient:
    return TestClient(create_app(project, ServeOptions(**options)), base_url="http://127.0.0.1")


def _rows(project: Path) -> list[db.ImageRow]:
    conn = db.connect(project, readonly=True)
    try:
        return db.images(conn)
    finally:
        conn.close()


def label_of(project: Path, image: int) -> dict[str, object] | None:
    conn = db.connect(project, readonly=True)
    try:
        return db.label_of(conn, image)
    finally:
        conn.close()


# ---- pure functions


def test_the_label_config_names_the_prediction_fields_and_must_hold_the_classes() -> None:
    assert parse_label_config(CONFIG, ["green", "red"]) == LabelConfig("label", "image", "image")
    other = CONFIG.replace('name="image" value="$image"', 'name="img" value="$picture"').replace("image", "img")
    assert parse_label_config(other, ["red", "green"]) == LabelConfig("label", "img", "picture")
    bad = {
        CONFIG.replace('<Choice value="green"/>', ""): "choices are red",
        CONFIG.replace(
            "</View>", '<Choices name="b" toName="image"><Choice value="red"/></Choices></View>'
        ): "2 Choices",
        CONFIG.replace('toName="image"', 'toName="other"'): "toName",
        "<View><Image": "not valid XML",
        "": "missing",
    }
    for text, message in bad.items():
        with pytest.raises(UserError, match=message):
            parse_label_config(text, ["red", "green"])


def test_setup_and_project_ids_as_label_studio_sends_them() -> None:
    setup = parse_setup(fixture("setup.json"))
    assert (setup.project, setup.hostname, setup.access_token) == (7, "http://localhost:8089", "LEGACY-API-TOKEN")
    assert project_id({"id": 3}) == project_id(3) == project_id("3.1796157337") == 3
    for bad in ("x", True, -1, None, 2.5):
        with pytest.raises(UserError, match="project id"):
            project_id(bad)


def test_a_webhook_annotation_becomes_a_label_studio_record() -> None:
    body = fixture("webhook-annotation-created.json")
    config = parse_label_config(CONFIG, ["red", "green"])
    (record,) = task_records(body["task"], config, [body["annotation"]])
    assert (record.image_id, record.path, record.label, record.annotator) == (1, "x/a.png", "green", "1")
    assert record.source == "label-studio" and record.time == "2026-12-01T20:35:38.220976Z"


def test_scores_put_the_batch_first_in_rank_order_then_the_most_uncertain() -> None:
    assert batch_score(1, 4) == 2.0 and batch_score(4, 4) == 1.25
    assert uncertainty([0.5, 0.5]) == 1.0 and uncertainty([1.0, 0.0, 0.0]) == 0.0
    scores = [priority(r, 3, None) for r in (1, 2, 3)] + [priority(None, 3, p) for p in ([0.5, 0.5], [0.9, 0.1])]
    assert scores == sorted(scores, reverse=True) and min(scores[:3]) > 1.0 >= max(scores[3:])
    assert priority(None, 3, None) is None


def test_recorded_bodies_carry_no_tokens() -> None:
    body = redact({"access_token": "secret", "project": {"token": "t", "id": 1}, "params": {"password": None}})
    assert body == {
        "access_token": "API-TOKEN",
        "project": {"token": "PROJECT-TOKEN", "id": 1},
        "params": {"password": None},
    }


# ---- the app


def test_health_setup_and_predict_without_a_model(project: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="lplgrad.serve.app")
    client = client_for(project)
    assert client.get("/health").json()["status"] == "UP"
    assert client.post("/setup", json=fixture("setup.json")).json() == {"model_version": "lplgrad-untrained"}
    wrong = {**fixture("setup.json"), "schema": CONFIG.replace('<Choice value="green"/>', "")}
    answer = client.post("/setup", json=wrong)
    assert answer.status_code == 400 and "choices are red" in answer.json()["error"]
    predicted = client.post("/predict", json=fixture("predict.json")).json()
    assert predicted == {"results": [[], []], "model_version": "lplgrad-untrained"}  # one entry per task
    lines = [r.getMessage() for r in caplog.records if r.name == "lplgrad.serve.app"]
    assert any(line.startswith("GET /health 200 (") for line in lines)  # every request, one line
    assert any(line.startswith("POST /setup 400 (") for line in lines)


def test_predictions_after_a_round_score_the_batch_first(project: Path) -> None:
    workflow.import_labels(project, [_labels_csv(project, {"y/00.png": "red", "y/01.png": "green"})])
    result = query(project, "entropy", k=3)
    batch = labeling.current_batch(project)
    tasks = [_task(100 + item["id"], item["id"], item["path"]) for item in batch]
    others = [row for row in _rows(project) if row.id not in {i["id"] for i in batch}]
    tasks += [_task(row.id, row.id, row.path) for row in others[:2]] + [_task(3, 999, "nowhere.png")]
    answer = client_for(project).post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()
    assert answer["model_version"] == f"lplgrad-round-{result.round}"
    results = answer["results"]
    assert results[-1] == [] and len(results) == len(tasks)  # an image not in the project: no prediction
    scores = [r["score"] for r in results[:-1]]
    assert scores[:3] == sorted(scores[:3], reverse=True) and min(scores[:3]) > 1.0 >= max(scores[3:])
    choice = results[0]["result"][0]
    assert (choice["from_name"], choice["to_name"], choice["type"]) == ("label", "image", "choices")
    assert choice["value"]["choices"][0] in ("red", "green")


def test_annotations_by_webhook_create_update_and_respect_other_sources(project: Path) -> None:
    client = client_for(project, train_every=0)
    created = fixture("webhook-annotation-created.json")
    answer = client.post("/webhook", json=created).json()
    assert answer == {"status": "ok", "image": 1, "label": "green", "change": "labeled"}
    assert label_of(project, 1) is not None and label_of(project, 1)["source"] == "label-studio"  # type: ignore[index]
    assert label_of(project, 1)["annotator"] == "ls:7:1"  # type: ignore[index]  # Label Studio project 7, user 1
    assert client.post("/webhook", json=created).json()["change"] == "unchanged"
    updated = _with_choice(created, "red", action="ANNOTATION_UPDATED")
    assert client.post("/webhook", json=updated).json()["change"] == "relabeled"
    assert label_of(project, 1)["label"] == "red"  # type: ignore[index]

    labeling.answer(project, 2, "green")  # the page labeled image 2
    other = _with_choice(created, "red", task=(46, 2, "x/b.png"))
    refused = client.post("/webhook", json=other)
    assert refused.status_code == 409 and "labeled 'green' by web" in refused.json()["error"]
    assert label_of(project, 2)["label"] == "green"  # type: ignore[index]

    unknown = _with_choice(created, "red", task=(47, 999, "elsewhere.png"))
    assert client.post("/webhook", json=unknown).json()["status"] == "ignored"
    purple = client.post("/webhook", json=_with_choice(created, "purple"))
    assert purple.status_code == 400 and "unknown class" in purple.json()["error"]
    skipped = copy.deepcopy(updated)
    skipped["annotation"]["was_cancelled"] = True
    assert client.post("/webhook", json=skipped).json()["change"] == "removed"  # an update to a skip
    assert label_of(project, 1) is None
    assert client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": []}).json()["status"] == "ignored"


def test_new_labels_train_a_round_and_predictions_follow_it(project: Path) -> None:
    client = client_for(project, train_every=2, k=3, refresh=False)
    created = fixture("webhook-annotation-created.json")
    assert client.post("/webhook", json=_with_choice(created, "red")).status_code == 200
    assert client.post("/webhook", json=_with_choice(created, "green", task=(46, 2, "x/b.png"))).status_code == 200
    _wait_for_round(client)
    predicted = client.post("/predict", json=fixture("predict.json")).json()
    assert predicted["model_version"] == "lplgrad-round-1"
    assert all(r["result"][0]["type"] == "choices" and 0 <= r["score"] <= 1 for r in predicted["results"])  # labeled
    batch = [item["id"] for item in labeling.current_batch(project) if item["label"] is None]
    assert len(batch) == 3  # the new round's batch, in rank order
    tasks = [_task(100 + row.id, row.id, row.path) for row in _rows(project)]
    results = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
    scores = {task["data"]["lplgrad_id"]: r["score"] for task, r in zip(tasks, results, strict=True)}
    assert sorted(scores, key=lambda image: -scores[image])[:3] == batch  # Label Studio's sort: the batch first
    assert min(scores[image] for image in batch) > 1.0 >= max(s for i, s in scores.items() if i not in batch)


def test_several_annotations_at_once_and_the_older_train_call(project: Path) -> None:
    client = client_for(project, train_every=0, refresh=False)
    created = fixture("webhook-annotation-created.json")
    many = {"action": "ANNOTATIONS_CREATED", "annotation": [created["annotation"]], "task": [created["task"]]}
    answer = client.post("/webhook", json={**many, "project": created["project"]}).json()
    assert (answer["status"], answer["labeled"]) == ("ok", 1) and label_of(project, 1)["label"] == "green"  # type: ignore[index]
    task = {**_task(46, 2, "x/b.png"), "annotations": [_with_choice(created, "red")["annotation"]]}
    trained = client.post("/train", json={"annotations": [task], "project": "7.1796157337", "label_config": CONFIG})
    assert trained.json()["status"] == "training" and trained.json()["labeled"] == 1
    assert label_of(project, 2)["label"] == "red"  # type: ignore[index]
    _wait_for_round(client)


def test_a_head_over_cached_features_predicts_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_images(tmp_path / "pool", 12)
    project = tmp_path / "head"
    head = {"model.backbone": "efficientnet-lite0", "train.finetune": "head", "train.min_steps": 20, "device": "cpu"}
    workflow.init(project, tmp_path / "pool", CLASSES, settings=head)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n000.png,red\nsub/001.png,green\n002.png,blue\n")
    workflow.import_labels(project, [labels])
    query(project, "margin", k=4)
    built: list[str] = []
    real = suggest.frozen_backbone
    monkeypatch.setattr(suggest, "frozen_backbone", lambda architecture: built.append("built") or real(architecture))
    config = read_settings(project)  # the settings now name other weights: the model file's still hold
    write_settings(project, replace(config, model=replace(config.model, weights="none")))
    paths = ["000.png", "sub/003.png", "004.png"]
    tasks = [{"id": n, "data": {"image": f"/data/local-files/?d={p}"}} for n, p in enumerate(paths, start=1)]
    config_xml = CONFIG.replace('<Choice value="green"/>', '<Choice value="green"/><Choice value="blue"/>')
    client = client_for(project)
    answer = client.post("/predict", json={"tasks": tasks, "label_config": config_xml}).json()
    assert answer["model_version"] == "lplgrad-round-1"
    assert all(r["result"][0]["value"]["choices"][0] in CLASSES for r in answer["results"])
    assert built == []  # every feature was in the cache: no backbone was built
    conn = sqlite3.connect(project / db.DB_FILE)
    with conn:
        conn.execute("DELETE FROM features")  # e.g. images added since the round
    conn.close()
    again = client.post("/predict", json={"tasks": tasks, "label_config": config_xml}).json()
    assert [r["result"] for r in again["results"]] == [r["result"] for r in answer["results"]]
    client.post("/predict", json={"tasks": tasks, "label_config": config_xml})
    assert built == ["built"]  # once for the model file, with its weights; the features are cached again


def test_a_sync_removes_only_the_labels_label_studio_wrote(project: Path) -> None:
    workflow.import_labels(project, [_labels_csv(project, {"y/00.png": "red"})])  # source csv
    record = LabelRecord(1, "x/a.png", "green", "1", "2026-01-01T00:00:00Z", "task 1", "label-studio")
    counts = sync_answers(project, 7, [(record, record)])
    assert counts.count("labeled") == 1
    gone = LabelRecord(1, "x/a.png", None, line="task 1")
    kept = LabelRecord(3, "y/00.png", None, line="task 3")
    counts = sync_answers(project, 7, [(gone, None), (kept, None), (LabelRecord(999, None, None), None)])
    assert (counts.count("removed"), counts.count("kept"), len(counts.unknown)) == (1, 1, 1)
    assert label_of(project, 1) is None and label_of(project, 3)["label"] == "red"  # type: ignore[index]


def test_labels_from_an_imported_export_or_another_label_studio_project_are_never_changed(project: Path) -> None:
    export = project.parent / "export.json"  # a Label Studio export, imported: source label-studio too
    task = {"data": {"lplgrad_id": 4, "image": "/data/local-files/?d=y/01.png"}, "annotations": []}
    task["annotations"] = [{"completed_by": 1, "result": [{"from_name": "choice", "value": {"choices": ["green"]}}]}]
    export.write_text(json.dumps([task]))
    workflow.import_labels(project, [export])
    assert (label_of(project, 4) or {})["source"] == "label-studio"
    other = LabelRecord(5, "y/02.png", "red", "1", None, "task 5")
    assert sync_answers(project, 8, [(other, other)]).count("labeled") == 1  # Label Studio project 8's
    gone_4, gone_5 = LabelRecord(4, None, None, line="task 4"), LabelRecord(5, None, None, line="task 5")
    counts = sync_answers(project, 7, [(gone_4, None), (gone_5, None)])  # project 7 has no answer for them
    assert counts.count("kept") == 2 and (label_of(project, 4) or {})["label"] == "green"
    contradiction = LabelRecord(4, None, "red", "1", None, "task 4")
    counts = sync_answers(project, 7, [(contradiction, contradiction)])
    assert len(counts.conflicts) == 1 and "lplgrad import of an export" in counts.conflicts[0]
    assert (label_of(project, 4) or {})["label"] == "green" and (label_of(project, 5) or {})["annotator"] == "ls:8:1"


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        ({"content-type": "text/plain"}, b"{}", 415),
        ({"content-type": "application/json"}, b"not json", 400),
        ({"content-type": "application/json"}, b"[1, 2]", 400),
        ({"content-type": "application/json"}, b"[" * 100_000, 400),
        ({"content-type": "application/json"}, b'{"action": 3}', 400),
        ({"content-type": "application/json"}, b'{"tasks": "no"}', 400),
    ],
)
def test_bad_bodies_are_one_line_errors(project: Path, headers: dict, content: bytes, status: int) -> None:
    client = client_for(project)
    path = "/predict" if b"tasks" in content else "/webhook"
    answer = client.post(path, content=content, headers=headers)
    assert answer.status_code == status and "\n" not in answer.json()["error"]


def test_limits_hosts_and_basic_auth(project: Path) -> None:
    client = client_for(project, basic_auth=("ls", "s3cret:x"))
    assert client.get("/health").status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret:x").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}
    assert client.get("/health", headers=good).status_code == 200
    assert client.get("/health", headers=bad).status_code == 401
    assert client.post("/setup", json={"schema": "x" * 70_000}, headers=good).status_code == 413  # 64 KiB
    big = client.post("/predict", json={"tasks": [], "label_config": "x" * 70_000}, headers=good)
    assert big.status_code == 400 and "label config" in big.json()["error"]  # read: tasks may fill 64 MiB
    assert client.post("/webhook", json={"action": "X", "pad": "x" * 70_000}, headers=good).status_code == 200
    assert client.get("/health", headers={**good, "host": "evil.example"}).status_code == 400


def test_push_sends_the_batch_once_with_predictions(project: Path) -> None:
    workflow.import_labels(project, [_labels_csv(project, {"y/00.png": "red", "y/01.png": "green"})])
    query(project, "entropy", k=3)
    fake = FakeLabelStudio()
    done = push(project, fake, 5)  # type: ignore[arg-type]
    assert (done.sent, done.already, done.with_prediction) == (3, 0, 3)
    task = fake.imported[0]
    assert task["data"]["image"].startswith("/data/local-files/?d=") and isinstance(task["data"]["lplgrad_id"], int)
    assert task["predictions"][0]["score"] == 2.0 and fake.version == "lplgrad-round-1"
    again = push(project, fake, 5, everything=True)  # type: ignore[arg-type]
    assert (again.sent, again.already) == (7, 3)  # the 10 unlabeled images, 3 of them there already


def test_cli_errors_are_one_line(project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "none")]) == 2
    assert main(["serve", str(project), "--basic-auth", "nocolon"]) == 2
    assert main(["push", str(project), "--label-studio-url", "ftp://x", "--api-key", "k", "--ls-project", "1"]) == 2
    assert main(["serve", str(project), "--api-key", "k"]) == 2  # the key only with the URL it goes to
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("lplgrad: error: ") for line in errors)
    assert "--api-key (or $LABEL_STUDIO_API_KEY) needs --label-studio-url" in errors[-1]


def test_the_api_key_goes_only_to_the_label_studio_the_operator_names(project: Path) -> None:
    setup = parse_setup({**fixture("setup.json"), "hostname": "http://evil.example", "access_token": "theirs"})
    config = parse_label_config(CONFIG, ["red", "green"])
    with pytest.raises(UserError, match="needs --label-studio-url"):
        Connections(key="operator-key")  # with a hostname from /setup it would go to whoever sent that
    with pytest.raises(UserError, match="needs --label-studio-url"):
        create_app(project, ServeOptions(api_key="operator-key"))
    operator = Connections("http://ls.internal:8080", "operator-key")
    operator.remember(setup, config)  # whoever can reach /setup names a host: the key never goes there
    client = operator.client(7)
    assert (client.url, client.key) == ("http://ls.internal:8080", "operator-key")
    hosted = Connections("http://ls.internal:8080")  # no key of ours: /setup's own token, to our URL
    hosted.remember(setup, config)
    assert (hosted.client(7).url, hosted.client(7).key) == ("http://ls.internal:8080", "theirs")
    alone = Connections()
    alone.remember(setup, config)
    assert (alone.client(7).url, alone.client(7).key) == ("http://evil.example", "theirs")  # its own token only


def test_a_sync_goes_on_past_a_malformed_task_and_an_unknown_class(project: Path) -> None:
    created = fixture("webhook-annotation-created.json")
    good = {**_task(45, 1, "x/a.png"), "annotations": [created["annotation"]]}
    malformed = {**_task(46, 2, "x/b.png"), "annotations": [{"result": [{"from_name": "label", "value": "red"}]}]}
    purple = {**_task(47, 3, "y/00.png"), "annotations": [_with_choice(created, "purple")["annotation"]]}
    late = {**_task(48, 4, "y/01.png"), "annotations": [_with_choice(created, "red")["annotation"]]}
    hooks = Webhooks(project, CountingLearner(), FakeConnections(FakeTasks([good, malformed, purple, late])))
    counts = hooks.sync(7)
    assert counts.count("labeled") == 2 and len(counts.unknown) == 1 and len(counts.conflicts) == 1
    assert "expected shape" in counts.unknown[0] and "unknown class 'purple'" in counts.conflicts[0]
    assert (label_of(project, 1) or {})["label"] == "green" and (label_of(project, 4) or {})["label"] == "red"
    broken = copy.deepcopy(created)
    broken["annotation"]["result"] = [{"from_name": "label", "value": "green"}]
    answer = client_for(project, train_every=0).post("/webhook", json=broken)  # a 400 with its reason, not a 500
    assert answer.status_code == 400 and "expected shape" in answer.json()["error"]


def test_a_label_written_by_webhook_while_a_sync_reads_label_studio_is_kept(project: Path) -> None:
    created = fixture("webhook-annotation-created.json")
    fake = FakeTasks([_task(45, 1, "x/a.png")])  # read before the annotation of task 45 was made
    hooks = Webhooks(project, CountingLearner(), FakeConnections(fake))
    fake.while_reading = lambda: hooks.handle(created)  # ... whose webhook comes while the sync reads
    counts = hooks.sync(7)
    assert counts.count("newer") == 1 and counts.count("removed") == 0
    assert (label_of(project, 1) or {})["label"] == "green"
    fake.while_reading = None
    assert hooks.sync(7).count("removed") == 1 and label_of(project, 1) is None  # a later read: it is gone


def test_a_skip_among_several_annotations_writes_nothing(project: Path) -> None:
    client = client_for(project, train_every=0)
    created = fixture("webhook-annotation-created.json")
    assert client.post("/webhook", json=created).json()["change"] == "labeled"
    skipped = copy.deepcopy(created["annotation"])
    skipped["was_cancelled"], skipped["result"] = True, []
    many = {"action": "ANNOTATIONS_CREATED", "annotation": [skipped], "task": [created["task"]]}
    answer = client.post("/webhook", json={**many, "project": created["project"]}).json()
    assert (answer["skipped"], answer["removed"]) == (1, 0) and (label_of(project, 1) or {})["label"] == "green"


def test_deletions_through_handle_sync_one_at_a_time_and_once_more_after(project: Path) -> None:
    created = fixture("webhook-annotation-created.json")
    fake = FakeTasks([_task(45, 1, "x/a.png")])
    hooks = Webhooks(project, CountingLearner(), FakeConnections(fake))
    hooks.handle(created)
    release = threading.Event()
    fake.while_reading = lambda: release.wait(30)
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 31}], "project": created["project"]}
    for _ in range(3):  # three deletions while the first sync reads Label Studio
        assert hooks.handle(deleted) == {"status": "accepted", "action": "ANNOTATIONS_DELETED"}
    assert hooks.syncing
    release.set()
    assert hooks.idle.wait(30)
    assert fake.reads == 2 and fake.most_at_once == 1  # the running sync, then one more for those that came
    assert label_of(project, 1) is None


def test_a_refresh_reaches_only_projects_set_up_and_selects_the_version_anyway(project: Path) -> None:
    fake = FakeTasks([], retrieve_fails=True)
    connections = FakeConnections(fake)
    hooks = Webhooks(project, CountingLearner(), connections)
    hooks.handle(fixture("webhook-annotation-created.json"))  # a webhook naming project 7: not set up
    hooks.refresh()
    assert fake.retrieved == [] and fake.selected == []
    connections.remember(parse_setup(fixture("setup.json")), parse_label_config(CONFIG, ["red", "green"]))
    hooks.refresh()
    assert fake.retrieved == [7] and fake.selected == [(7, "lplgrad-untrained")]  # retrieving timed out


def test_two_webhooks_that_both_reach_n_labels_start_one_round(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    learner = Learner(project, None, 3, every=2)
    trainer = FakeTrainer()
    learner.trainer = trainer  # type: ignore[assignment]
    both_counted = threading.Barrier(2)
    monkeypatch.setattr(learner_module, "unlabeled_count", lambda project: both_counted.wait(10) * 0 + 10)
    learner.new_labels = 1
    threads = [threading.Thread(target=learner.labeled, args=(1,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert trainer.starts == 1 and not learner.wanted and learner.new_labels == 0


def test_an_unreadable_image_leaves_only_its_task_without_a_prediction(project: Path) -> None:
    workflow.import_labels(project, [_labels_csv(project, {"y/00.png": "red", "y/01.png": "green"})])
    query(project, "entropy", k=3)
    rows = {row.path: row for row in _rows(project)}
    (rows["y/05.png"].full_path).write_bytes(b"not an image any more")
    tasks = [_task(n, rows[p].id, p) for n, p in enumerate(["y/04.png", "y/05.png", "y/06.png"], start=1)]
    answer = client_for(project).post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert answer.status_code == 200
    first, broken, last = answer.json()["results"]
    assert broken == [] and first["result"] and last["result"]


# ---- helpers


class CountingLearner:
    def __init__(self) -> None:
        self.labels = 0
        self.rounds = 0

    def labeled(self, count: int) -> None:
        self.labels += count

    def train(self, why: str) -> bool:
        self.rounds += 1
        return True


class FakeTasks:
    """Label Studio's API as a sync reads it: the label config, these tasks (``while_reading`` runs
    while they are read), and the refresh's two calls."""

    def __init__(self, tasks: list[dict[str, Any]], retrieve_fails: bool = False) -> None:
        self.listed, self.retrieve_fails = tasks, retrieve_fails
        self.while_reading: Any = None
        self.reads = self.reading = self.most_at_once = 0
        self.retrieved: list[int] = []
        self.selected: list[tuple[int, str]] = []

    def project(self, project: int) -> dict[str, Any]:
        return {"id": project, "label_config": CONFIG}

    def tasks(self, project: int, annotations: bool = True) -> list[dict[str, Any]]:
        self.reads, self.reading = self.reads + 1, self.reading + 1
        self.most_at_once = max(self.most_at_once, self.reading)
        listed = copy.deepcopy(self.listed)
        if self.while_reading is not None:
            self.while_reading()
        self.reading -= 1
        return listed

    def retrieve_predictions(self, project: int) -> None:
        self.retrieved.append(project)
        if self.retrieve_fails:
            raise UserError("cannot reach Label Studio at http://ls: timed out")

    def select_model_version(self, project: int, version: str) -> None:
        self.selected.append((project, version))


class FakeConnections(Connections):
    def __init__(self, fake: FakeTasks) -> None:
        super().__init__()
        self.fake = fake

    def client(self, project: int) -> Any:
        return self.fake


class FakeTrainer:
    """The round trainer: a round starts unless one runs (none ever ends here)."""

    def __init__(self) -> None:
        self.k, self.starts = 0, 0

    def start(self, include_pending: bool = False) -> bool:
        self.starts += 1
        return self.starts == 1


class FakeLabelStudio:
    """The calls push makes, kept in memory."""

    def __init__(self) -> None:
        self.imported: list[dict[str, Any]] = []
        self.version: str | None = None

    def project(self, project: int) -> dict[str, Any]:
        return {"label_config": CONFIG}

    def tasks(self, project: int, annotations: bool = True) -> list[dict[str, Any]]:
        return [{"id": n, **task} for n, task in enumerate(self.imported, start=1)]

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        self.imported += tasks
        return {"task_count": len(tasks)}

    def select_model_version(self, project: int, version: str) -> None:
        self.version = version


def _wait_for_round(client: TestClient) -> None:
    """Until the round the server started has finished (and without an error)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        training = client.get("/health").json()["training"]
        if training["message"].startswith("round ") and not training["running"]:
            break
        time.sleep(0.2)
    assert training["error"] is None and not training["running"], training


def _task(task_id: int, image: int, path: str) -> dict[str, Any]:
    return {"id": task_id, "data": {"image": f"/data/local-files/?d={path}", "lplgrad_id": image}}


def _with_choice(
    body: dict[str, Any], label: str, action: str | None = None, task: tuple[int, int, str] | None = None
) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    changed["annotation"]["result"][0]["value"]["choices"] = [label]
    if action:
        changed["action"] = action
    if task:
        changed["task"].update(_task(*task))
        changed["annotation"]["task"] = task[0]
    return changed


def _labels_csv(project: Path, labels: dict[str, str]) -> Path:
    path = project.parent / f"labels-{len(labels)}.csv"
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in labels.items()))
    return path
