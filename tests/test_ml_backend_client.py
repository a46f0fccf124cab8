"""The Label Studio API client of ``lplgrad serve`` / ``push`` against a small stand-in server: paging,
both kinds of API key, and errors as one-line UserErrors."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from lplgrad.errors import UserError
from lplgrad.serve import label_studio_api
from lplgrad.serve.label_studio_api import PAGE, LabelStudio, check_url, is_personal_token

LEGACY = "0123456789abcdef"
PERSONAL = "header.payload.signature"
TASKS = [{"id": n, "data": {"image": f"/data/local-files/?d={n}.png"}} for n in range(1, 2 * PAGE + 51)]


class StandIn(BaseHTTPRequestHandler):
    """Answers like Label Studio: a paged task list, a token refresh; 401 for a wrong key."""

    seen: ClassVar[list[str]] = []
    expired = False  # the next Bearer call is refused once, as an expired access token is

    def do_GET(self) -> None:
        if not self._authorized():
            return self._send(401, {"detail": "Invalid token."})
        query = parse_qs(urlparse(self.path).query)
        page, size = int(query["page"][0]), int(query["page_size"][0])
        self._send(200, {"tasks": TASKS[(page - 1) * size : page * size], "total": len(TASKS)})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/token/refresh/":
            return self._send(200 if body == {"refresh": PERSONAL} else 401, {"access": "access-1"})
        if self.path.startswith("/api/dm/actions?id=retrieve_tasks_predictions"):
            time.sleep(0.6)  # Label Studio answers once every task has its prediction
            return self._send(200, {"processed_items": len(TASKS)})
        self._send(500, {"detail": "boom"})

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        StandIn.seen.append(given)
        if given == "Bearer access-1" and StandIn.expired:
            StandIn.expired = False
            return False
        return given in (f"Token {LEGACY}", "Bearer access-1")

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (a timeout test)
            pass

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    StandIn.seen, StandIn.expired = [], False
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_page_of_tasks_with_a_legacy_token(server: str) -> None:
    tasks = LabelStudio(server, LEGACY).tasks(3)
    assert [t["id"] for t in tasks] == [t["id"] for t in TASKS] and len(StandIn.seen) == 3


def test_a_personal_token_is_exchanged_and_again_when_it_expires(server: str) -> None:
    client = LabelStudio(server + "/", PERSONAL)
    assert is_personal_token(PERSONAL) and not is_personal_token(LEGACY)
    assert len(client.tasks(3)) == len(TASKS)
    StandIn.expired = True
    assert len(client.tasks(3)) == len(TASKS)
    assert set(StandIn.seen) == {"Bearer access-1"}


@pytest.mark.parametrize(
    ("url", "key", "message"),
    [
        (None, "wrong", "answered 401 to GET /api/tasks"),
        (None, "a.b.c", "answered 401 to POST /api/token/refresh/"),
        ("http://127.0.0.1:9", LEGACY, "cannot reach Label Studio"),
        ("file:///etc/passwd", LEGACY, "must be http"),
    ],
)
def test_errors_are_one_line(server: str, url: str | None, key: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as raised:
        LabelStudio(url or server, key).tasks(1)
    assert "\n" not in str(raised.value)


def test_a_server_error_names_the_call(server: str) -> None:
    with pytest.raises(UserError, match="answered 500 to POST /api/projects/2/import"):
        LabelStudio(server, LEGACY).import_tasks(2, [])
    assert check_url("https://ls.example.com/") == "https://ls.example.com"


def test_retrieving_predictions_may_take_longer_than_other_calls(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(label_studio_api, "TIMEOUT", 0.2)
    monkeypatch.setattr(label_studio_api, "RETRIEVE_TIMEOUT", 10.0)
    client = LabelStudio(server, LEGACY)
    client.retrieve_predictions(3)  # 0.6 s: within its own timeout
    with pytest.raises(UserError, match="cannot reach Label Studio"):  # any other call would have given up
        client.call("POST", "/api/dm/actions?id=retrieve_tasks_predictions&project=3", {})
