"""The labeling web app through Starlette's test client: every endpoint, bad input, and security."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from lplgrad.project import workflow
from lplgrad.project.query import query
from lplgrad.web.app import create_app
from tests.helpers import CLASSES, make_images

TINY = {"train.epochs": 1, "model.width": 4, "train.min_steps": 0, "device": "cpu"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    make_images(tmp_path / "pool", 30)
    make_images(tmp_path / "test", 6, seed=1, folders=True)
    project = tmp_path / "project"
    workflow.init(project, tmp_path / "pool", CLASSES, test=tmp_path / "test", settings=TINY)
    query(project, "random", k=5)
    (tmp_path / "secret.txt").write_text("not for the web")
    return project


@pytest.fixture
def client(project: Path) -> tuple[TestClient, str]:
    client = TestClient(create_app(project, "entropy", k=4), base_url="http://127.0.0.1")
    page = client.get("/")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert page.status_code == 200 and token is not None
    return client, token.group(1)


def post(client: TestClient, token: str, path: str, body: object = None) -> object:
    return client.post(path, json=body or {}, headers={"X-CSRF-Token": token})


def test_page_state_and_security_headers(client) -> None:
    client, _ = client
    page = client.get("/")
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    state = client.get("/api/state").json()
    assert [item["rank"] for item in state["batch"]] == [1, 2, 3, 4, 5]
    assert state["status"]["classes"] == CLASSES and state["training"]["running"] is False


def test_label_undo_and_the_database_agree(client, project: Path) -> None:
    client, token = client
    first = client.get("/api/state").json()["batch"][0]["id"]
    assert post(client, token, "/api/label", {"image": first, "label": "green"}).status_code == 200
    assert workflow.status(project)["labeled"] == 1
    batch = client.get("/api/state").json()["batch"]
    assert batch[0]["label"] == "green"
    assert post(client, token, "/api/undo").status_code == 200
    assert workflow.status(project)["labeled"] == 0
    assert post(client, token, "/api/undo").status_code == 409  # nothing left to undo


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"image": 1, "label": "purple"}, 400),
        ({"image": 99999, "label": "red"}, 400),
        ({"image": "1", "label": "red"}, 400),
        ({"image": True, "label": "red"}, 400),
        ({"label": "red"}, 400),
    ],
)
def test_bad_answers_are_rejected_and_change_nothing(client, project: Path, body: dict, status: int) -> None:
    client, token = client
    assert post(client, token, "/api/label", body).status_code == status
    assert workflow.status(project)["labeled"] == 0


def test_posts_need_the_token_and_json(client, project: Path) -> None:
    client, token = client
    image = client.get("/api/state").json()["batch"][0]["id"]
    assert client.post("/api/label", json={"image": image, "label": "red"}).status_code == 403
    assert (
        client.post("/api/label", json={"image": image, "label": "red"}, headers={"X-CSRF-Token": "guess"}).status_code
        == 403
    )
    assert (
        client.post(
            "/api/label",
            content=b"image=1&label=red",
            headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"},
        ).status_code
        == 415
    )
    assert client.get("/api/label").status_code == 405
    assert workflow.status(project)["labeled"] == 0


def test_images_are_served_by_id_only(client, project: Path) -> None:
    client, _ = client
    image = client.get("/api/state").json()["batch"][0]["id"]
    served = client.get(f"/image/{image}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    for attempt in [
        "/image/99999",
        "/image/-1",
        "/image/../secret.txt",
        "/image/%2e%2e%2fsecret.txt",
        "/image/..%2F..%2Fsecret.txt",
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/image/1%2F..%2F..%2Fsecret.txt",
    ]:
        response = client.get(attempt)
        assert response.status_code == 404, attempt
        assert b"not for the web" not in response.content and b"create_app" not in response.content


def test_train_runs_one_round_at_a_time_in_the_background(client, project: Path) -> None:
    client, token = client
    for item in client.get("/api/state").json()["batch"]:
        assert post(client, token, "/api/label", {"image": item["id"], "label": "red"}).status_code == 200
    assert post(client, token, "/api/train").status_code == 202
    second = post(client, token, "/api/train")
    deadline = time.monotonic() + 120
    while client.get("/api/state").json()["training"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    state = client.get("/api/state").json()
    assert state["training"]["error"] is None, state["training"]
    assert second.status_code in (202, 409)  # 409 unless the first round had already finished
    rounds = state["dashboard"]["rounds"]
    assert len(rounds) >= 2 and rounds[1]["accuracy"] is not None and rounds[1]["accuracy_on"] == "test"
    assert rounds[0]["found"] == {"red": 5}
    assert len(state["batch"]) == 4 and all(item["label"] is None for item in state["batch"])


def test_labels_imported_from_the_cli_show_after_a_reload(client, project: Path, tmp_path: Path) -> None:
    client, _ = client
    item = client.get("/api/state").json()["batch"][1]
    (tmp_path / "cli.csv").write_text(f"id,label\n{item['id']},blue\n")
    workflow.import_labels(project, [tmp_path / "cli.csv"])
    assert client.get("/api/state").json()["batch"][1]["label"] == "blue"


def test_other_host_names_huge_ids_and_odd_tokens_are_refused(client, project: Path) -> None:
    client, token = client
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    assert post(client, token, "/api/label", {"image": 2**70, "label": "red"}).status_code == 400
    assert client.get(f"/image/{2**70}").status_code == 404
    image = client.get("/api/state").json()["batch"][0]["id"]
    odd = client.post("/api/label", json={"image": image, "label": "red"}, headers={"X-CSRF-Token": "tökén".encode()})
    assert odd.status_code == 403
    assert workflow.status(project)["labeled"] == 0


def test_an_unfinished_batch_stays_on_the_page_after_the_next_round(client, project: Path) -> None:
    client, token = client
    first = client.get("/api/state").json()["batch"]
    assert post(client, token, "/api/label", {"image": first[0]["id"], "label": "red"}).status_code == 200
    query(project, "random", k=3)
    shown = {item["id"] for item in client.get("/api/state").json()["batch"]}
    assert {item["id"] for item in first[1:]} <= shown  # the four still unlabeled from round 1
    assert first[0]["id"] not in shown


def test_in_head_mode_the_page_retrains_after_every_few_answers(tmp_path: Path) -> None:
    from lplgrad.web.app import CONTINUOUS_EVERY

    make_images(tmp_path / "hpool", 20)
    project = tmp_path / "head"
    head = {"model.backbone": "efficientnet-lite0", "train.finetune": "head", "train.min_steps": 20, "device": "cpu"}
    workflow.init(project, tmp_path / "hpool", CLASSES, settings=head)
    query(project, "random", k=8)
    client = TestClient(create_app(project, "margin", k=4), base_url="http://127.0.0.1")
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text)
    assert token is not None
    for item in client.get("/api/state").json()["batch"][:CONTINUOUS_EVERY]:
        assert post(client, token.group(1), "/api/label", {"image": item["id"], "label": "red"}).status_code == 200
    deadline = time.monotonic() + 120
    while client.get("/api/state").json()["training"]["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    state = client.get("/api/state").json()
    assert state["training"]["error"] is None, state["training"]
    assert [r["round"] for r in state["dashboard"]["rounds"]] == [1, 2]  # started by the answers alone
    assert state["batch"][0]["round"] == 2 and state["batch"][0]["suggested"] is not None
