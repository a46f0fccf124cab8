"""A live round trip through a real Label Studio server (marked ``labelstudio``, not in the default run).

    python3 -m venv /tmp/lsenv && /tmp/lsenv/bin/pip install label-studio
    LPLGRAD_LABEL_STUDIO=/tmp/lsenv/bin/label-studio pytest -m labelstudio

Starts Label Studio on 127.0.0.1 with local-files serving from the project's image folder, creates a
project with the batch's label-studio-config.xml, imports label-studio.json through the API,
annotates every task through the API (the true class, one task skipped), exports JSON_MIN and
imports that into lplgrad.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lplgrad.project import db, workflow
from lplgrad.project.query import query
from tests.helpers import CLASSES, make_images

pytestmark = pytest.mark.labelstudio
TOKEN = "lplgrad-live-test-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def call(base: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Token {TOKEN}")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read().decode()
    return json.loads(text) if text else None


@pytest.fixture
def label_studio(tmp_path: Path) -> Any:
    binary = os.environ.get("LPLGRAD_LABEL_STUDIO")
    if not binary or not Path(binary).exists():
        pytest.skip("set LPLGRAD_LABEL_STUDIO to a label-studio executable (see this file's docstring)")
    images = tmp_path / "images"
    images.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(images),
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
    }
    command = [
        binary,
        "start",
        "--internal-host",  # the address it listens on (--host only sets the URL it calls back at)
        "127.0.0.1",
        "--port",
        str(port),
        "--no-browser",
        "--data-dir",
        str(tmp_path / "ls-data"),
        "--username",
        "lplgrad@example.com",
        "--password",
        "lplgrad-live-test",
        "--user-token",
        TOKEN,
        "--enable-legacy-api-token",
    ]
    log = (tmp_path / "label-studio.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                call(base, "GET", "/api/projects")
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"label-studio exited: {(tmp_path / 'label-studio.log').read_text()[-2000:]}")
                time.sleep(1)
        else:
            pytest.fail("label-studio did not answer within 180 s")
        yield base, images
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_batch_through_label_studio_and_back(tmp_path: Path, label_studio: Any) -> None:
    base, images = label_studio
    truth = make_images(images, 12)
    project = tmp_path / "project"
    workflow.init(project, images, CLASSES, settings={"device": "cpu"})
    batch = query(project, "random", k=5).folder

    created = call(
        base,
        "POST",
        "/api/projects",
        {"title": "lplgrad round 1", "label_config": (batch / "label-studio-config.xml").read_text()},
    )
    tasks = json.loads((batch / "label-studio.json").read_text())
    call(base, "POST", f"/api/projects/{created['id']}/import", tasks)
    listed = call(base, "GET", f"/api/tasks?project={created['id']}&page_size=100")
    server_tasks = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(server_tasks) == 5
    for number, task in enumerate(sorted(server_tasks, key=lambda t: t["id"])):
        path = task["data"]["image"].split("?d=", 1)[1]
        if number == 0:
            body: dict[str, Any] = {"result": [], "was_cancelled": True}  # the person skips one image
        else:
            body = {
                "result": [
                    {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": [truth[path]]}}
                ]
            }
        call(base, "POST", f"/api/tasks/{task['id']}/annotations", body)
    request = urllib.request.Request(f"{base}/api/projects/{created['id']}/export?exportType=JSON_MIN")
    request.add_header("Authorization", f"Token {TOKEN}")
    with urllib.request.urlopen(request, timeout=60) as response:
        (tmp_path / "export.json").write_bytes(response.read())

    counts = workflow.import_labels(project, [tmp_path / "export.json"])
    assert counts.labeled == 4
    conn = db.connect(project)
    labeled = {row.path: row.label for row in db.images(conn) if row.label is not None}
    assert labeled == {path: truth[path] for path in labeled} and len(labeled) == 4
