"""The few calls lplgrad makes to Label Studio's REST API, with the standard library's urllib.

Authentication is an API key: a legacy token (``Authorization: Token KEY``: the one Label Studio
itself sends an ML backend in ``/setup``; organizations made by Label Studio 1.23 accept it only
once legacy tokens are enabled) or a personal access token (Account & Settings). Every failure is
a UserError that names the URL and what Label Studio answered.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode, urlparse

from lplgrad.errors import UserError, one_line

PAGE = 100  # tasks per page read
TIMEOUT = 60.0  # seconds per call
RETRIEVE_TIMEOUT = 900.0  # seconds for "Retrieve predictions": Label Studio answers once every task has one


class Refused(UserError):
    """Label Studio answered with an HTTP error (``code``)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_url(url: str) -> str:
    """An http(s) URL without a trailing slash; anything else is a UserError."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UserError(f"the Label Studio URL must be http(s)://host[:port], got {url!r}")
    return url.rstrip("/")


def is_personal_token(key: str) -> bool:
    """A personal access token (a JWT refresh token: three dot-separated parts), not a legacy token."""
    return key.count(".") == 2 and all(key.split("."))


class LabelStudio:
    """One Label Studio server, called with an API key: a legacy token (sent as ``Token KEY``) or a
    personal access token (exchanged at ``/api/token/refresh/`` for an access token, sent as
    ``Bearer``, exchanged again when it expires)."""

    def __init__(self, url: str, key: str) -> None:
        self.url = check_url(url)
        self.key = key
        self._access: str | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """One API call (``timeout`` seconds, default TIMEOUT); its JSON answer (None for an empty one)."""
        try:
            return self._send(method, path, body, self._authorization(), timeout)
        except Refused as refused:
            if refused.code != 401 or not is_personal_token(self.key):
                raise
            self._access = None  # the access token expired: exchange the personal token again
            return self._send(method, path, body, self._authorization(), timeout)

    def _authorization(self) -> str:
        if not is_personal_token(self.key):
            return f"Token {self.key}"
        if self._access is None:
            answer = self._send("POST", "/api/token/refresh/", {"refresh": self.key}, None)
            if not isinstance(answer, dict) or not isinstance(answer.get("access"), str):
                raise UserError(f"Label Studio {self.url} gave no access token for the personal access token")
            self._access = answer["access"]
        return f"Bearer {self._access}"

    def _send(self, method: str, path: str, body: Any, authorization: str | None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if authorization:
            request.add_header("Authorization", authorization)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout or TIMEOUT) as response:  # an http(s) URL: check_url
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", "replace")[:300]
            hint = " (check the API key: docs/label-studio.md)" if error.code in (401, 403) else ""
            message = f"Label Studio {self.url} answered {error.code} to {method} {path}{hint}: {detail}"
            raise Refused(error.code, one_line(message)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise UserError(f"cannot reach Label Studio at {self.url}: {reason}") from None
        try:
            return json.loads(text) if text.strip() else None
        except ValueError:
            raise UserError(
                f"Label Studio {self.url} answered {method} {path} with something that is not JSON"
            ) from None

    def project(self, project: int) -> dict[str, Any]:
        answer = self.call("GET", f"/api/projects/{project}")
        if not isinstance(answer, dict) or "label_config" not in answer:
            raise UserError(f"Label Studio {self.url}: project {project} has no label config")
        return answer

    def tasks(self, project: int, annotations: bool = True) -> list[dict[str, Any]]:
        """Every task of a project (with its annotations), a page at a time; URLs as stored."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            query = {"project": project, "page": page, "page_size": PAGE, "resolve_uri": "false"}
            if annotations:
                query["fields"] = "all"
            answer = self.call("GET", "/api/tasks?" + urlencode(query))
            batch = answer.get("tasks", []) if isinstance(answer, dict) else answer
            if not isinstance(batch, list):
                raise UserError(f"Label Studio {self.url}: the task list of project {project} is not a list")
            found += [task for task in batch if isinstance(task, dict)]
            total = answer.get("total") if isinstance(answer, dict) else None
            if not batch or len(batch) < PAGE or (isinstance(total, int) and len(found) >= total):
                return found
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        answer = self.call("POST", f"/api/projects/{project}/import", tasks)
        return answer if isinstance(answer, dict) else {}

    def retrieve_predictions(self, project: int) -> None:
        """The Data Manager's "Retrieve predictions" on every task: Label Studio asks the backend's
        ``/predict`` for the tasks without a prediction of its current model version, and answers
        when they have one (minutes for a large project: RETRIEVE_TIMEOUT)."""
        everything = {"selectedItems": {"all": True, "excluded": []}}
        path = f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}"
        self.call("POST", path, everything, RETRIEVE_TIMEOUT)

    def select_model_version(self, project: int, version: str) -> None:
        """Make ``version`` the project's model version: the predictions its labeling view shows and
        the ones the Data Manager's "Prediction score" averages (Label Studio 1.23.2 uses only the
        project's model version there; a version must have predictions before it can be chosen)."""
        self.call("PATCH", f"/api/projects/{project}", {"model_version": version})
