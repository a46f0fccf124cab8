"""``lplgrad serve``: a Label Studio ML backend for one labeling project (Starlette).

Routes: ``GET /health``, ``POST /setup`` (checks the label config against the project's classes),
``POST /predict`` (the newest model's class and lplgrad's priority as the score), ``POST /webhook``
(annotations created, updated, deleted; START_TRAINING) and ``POST /train`` (older Label Studio).
It speaks no SQL: labels go through ``project.answers``, predictions through ``serve.predictions``,
rounds through ``serve.learner``. Security as the labeling page's (``web.app``): allowed Host names
only, JSON bodies of bounded size (``BODY_LIMITS``, read by the page's ``read_json``), work in the
thread pool, one-line JSON errors (400, 409 for a label another source wrote, 503 for a database
problem); optional HTTP Basic auth (``serve.auth``). Nothing a request names is read from disk:
tasks are matched to registered images only. Every request is logged on one line (``RequestLog``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lplgrad.project import db
from lplgrad.project.settings import DEFAULT_BATCH
from lplgrad.project.suggest import Model, snapshot
from lplgrad.serve.auth import BasicAuth
from lplgrad.serve.learner import Learner
from lplgrad.serve.predictions import predict_tasks
from lplgrad.serve.protocol import parse_label_config, parse_setup, tasks_of
from lplgrad.serve.record import Recorder
from lplgrad.serve.webhook import Connections, Webhooks
from lplgrad.web.app import LOCAL_HOSTS, SecurityHeaders, _answer, read_json

log = logging.getLogger(__name__)

SMALL_BODY = 64 * 1024  # bytes of a /setup body: a project id, a label config, a URL and a token
# Label Studio sends bulk events (ANNOTATIONS_CREATED, TASKS_CREATED) in batches of WEBHOOK_BATCH_SIZE
# (5000 in 1.23.2) annotations or tasks, about 1.5 kB each with its task; any other webhook is a few kB.
WEBHOOK_BODY = 16 * 1024 * 1024
MAX_BODY = 64 * 1024 * 1024  # /predict and /train: "Retrieve predictions" sends every task in one body (~700 B each)
BODY_LIMITS = {"setup": SMALL_BODY, "webhook": WEBHOOK_BODY, "predict": MAX_BODY, "train": MAX_BODY}


@dataclass(frozen=True)
class ServeOptions:
    strategy: str | None = None  # of the rounds it trains (default: the project's)
    k: int = DEFAULT_BATCH
    train_every: int = 5  # new labels between rounds; 0: only when Label Studio asks
    allowed_hosts: list[str] = field(default_factory=lambda: list(LOCAL_HOSTS))
    basic_auth: tuple[str, str] | None = None
    label_studio_url: str | None = None  # where to call Label Studio back (else the hostname /setup sends)
    api_key: str | None = None  # the operator's key: needs label_studio_url, and goes only there
    record: Path | None = None
    refresh: bool = True  # after each round, have Label Studio retrieve and select the new predictions


def create_app(project: Path, options: ServeOptions | None = None) -> Starlette:
    options = options or ServeOptions()
    db.connect(project, readonly=True).close()  # fails now, with the CLI's one-line error, if DIR is no project
    model = Model(project)
    learner = Learner(project, options.strategy, options.k, options.train_every)
    connections = Connections(options.label_studio_url, options.api_key)
    hooks = Webhooks(project, learner, connections)
    if options.refresh:
        learner.on_round = hooks.refresh
    recorder = None if options.record is None else Recorder(options.record)

    def classes() -> list[str]:
        return snapshot(project).classes

    async def health(request: Request) -> Response:
        state = {"training": learner.state(), "syncing": hooks.syncing}
        return JSONResponse({"status": "UP", "model_class": "lplgrad", **state})

    def setup(body: dict[str, Any]) -> dict[str, Any]:
        given = parse_setup(body)
        connections.remember(given, parse_label_config(given.label_config, classes()))
        return {"model_version": snapshot(project).version}

    def predict(body: dict[str, Any]) -> dict[str, Any]:
        tasks = tasks_of(body)
        done = predict_tasks(project, model, parse_label_config(body.get("label_config"), classes()), tasks)
        for reason in done.unknown:
            log.warning("predict: no prediction for %s", reason)
        if done.without_model:
            log.info("predict: no trained model yet: %d task(s) get a batch score only, or nothing", done.without_model)
        predicted = sum(1 for r in done.results if r)
        log.info("predict: %d task(s), %d with a prediction (%s)", len(tasks), predicted, done.version)
        return {"results": done.results, "model_version": done.version}

    def route(name: str, work: Callable[[dict[str, Any]], dict[str, Any]]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await _serve(request, name, recorder, work)

        return Route(f"/{name}", endpoint, methods=["POST"])

    routes = [
        Route("/", health),
        Route("/health", health),
        route("setup", setup),
        route("predict", predict),
        route("webhook", hooks.handle),
        route("train", hooks.train_request),
    ]
    middleware = [
        Middleware(RequestLog),
        Middleware(TrustedHostMiddleware, allowed_hosts=options.allowed_hosts),
        Middleware(SecurityHeaders),
    ]
    if options.basic_auth is not None:
        middleware.append(Middleware(BasicAuth, user=options.basic_auth[0], password=options.basic_auth[1]))
    return Starlette(routes=routes, middleware=middleware)


async def _serve(
    request: Request, route: str, recorder: Recorder | None, work: Callable[[dict[str, Any]], dict[str, Any]]
) -> Response:
    """Read the request's JSON object (bounded, validated), record it if asked, run ``work`` on it in
    the thread pool; an error is a one-line JSON answer, and a line in the log (Label Studio shows
    only the status code)."""
    body = await read_json(request, BODY_LIMITS[route])
    if isinstance(body, Response):
        log.warning("%s: refused a request: %s", route, bytes(body.body).decode(errors="replace"))
        return body

    def run() -> dict[str, Any]:
        if recorder is not None:
            recorder.write(route, body)
        return work(body)

    response = await _answer(run)
    if response.status_code >= 400:
        log.warning("%s: %s", route, bytes(response.body).decode(errors="replace"))
    return response


class RequestLog:
    """One log line per request: method, path, status, milliseconds (uvicorn's own access log is off)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began, status = time.monotonic(), [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = (time.monotonic() - began) * 1000
            log.info("%s %s %d (%.0f ms)", scope.get("method"), scope.get("path"), status[0], elapsed)
