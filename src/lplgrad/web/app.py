"""``lplgrad label``: a small local web app to label a project's batch while the model learns.

Starlette routes over the project functions (``project.labeling``, ``project.query``); the app
speaks no SQL. Security: images are served by registered id only, and only while the file holds
exactly the registered bytes inside its images folder; state-changing requests are POSTs carrying
the page's token in ``X-CSRF-Token``, with a small JSON body; requests must name an allowed host;
every response has no-sniff, frame-deny and a content security policy that allows only this origin.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lplgrad.errors import UserError, one_line
from lplgrad.project import db, labeling, relabel, workflow
from lplgrad.project.images import ImageRefused
from lplgrad.project.settings import DEFAULT_BATCH, read_settings
from lplgrad.web.trainer import Trainer

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
}
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".ppm": "image/x-portable-pixmap",
    ".pgm": "image/x-portable-graymap",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
MAX_BODY = 64 * 1024  # bytes of a POST body: an answer is a few dozen
CONTINUOUS_EVERY = 5  # answers between the background rounds of a head-mode project


def create_app(
    project: Path, strategy: str | None = None, k: int = DEFAULT_BATCH, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The app for one project; ``strategy`` and ``k`` size the rounds its button trains. Requests
    must name one of ``allowed_hosts`` (default: this machine's names) in their Host header, so a
    web page that rebinds its own domain to 127.0.0.1 (DNS rebinding) cannot reach the app.
    Database and file work runs in Starlette's thread pool, never on the event loop."""
    db.connect(project, readonly=True).close()  # fails now, with the CLI's one-line error, if DIR is no project
    token = secrets.token_urlsafe(32)
    trainer = Trainer(project, strategy, k)
    # Continuous learning: with a head on cached features a round takes seconds, so after every few
    # answers one starts in the background and the next images come from a model that has seen them.
    continuous = read_settings(project).train.finetune == "head"
    since_round = [0]  # answers since the last round started
    undo_stack: list[labeling.Answer] = []
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "label.html", {"project": project.name, "token": token})

    def read_state() -> dict[str, Any]:
        return {
            "batch": labeling.current_batch(project),
            "status": workflow.status(project),
            "dashboard": labeling.dashboard(project),
            "review": relabel.review_batch(project),
            "training": trainer.state(),
            "can_undo": bool(undo_stack),
        }

    async def state(request: Request) -> Response:
        return await _answer(read_state)

    async def image(request: Request) -> Response:
        image_id = int(request.path_params["image_id"])
        if not 0 < image_id < 2**63:
            return JSONResponse({"error": "no such image"}, status_code=404)
        try:
            data, suffix = await run_in_threadpool(labeling.image_bytes, project, image_id)
        except ImageRefused as refused:
            return JSONResponse({"error": str(refused)}, status_code=refused.status)
        except (UserError, sqlite3.DatabaseError) as error:
            return _error(error)
        return Response(data, media_type=IMAGE_TYPES.get(suffix, "application/octet-stream"))

    async def label(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, token)
        if isinstance(body, Response):
            return body
        image_id, name = _image_id(body), body.get("label")
        if image_id is None or not isinstance(name, str):
            return JSONResponse({"error": 'expected {"image": id, "label": class}'}, status_code=400)

        def write() -> dict[str, Any]:
            undo_stack.append(labeling.answer(project, image_id, name))
            since_round[0] += 1
            if continuous and since_round[0] >= CONTINUOUS_EVERY and trainer.start(include_pending=True):
                since_round[0] = 0
            return {"ok": True}

        return await _answer(write)

    async def skip(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, token)
        if isinstance(body, Response):
            return body
        image_id = _image_id(body)
        if image_id is None:
            return JSONResponse({"error": 'expected {"image": id}'}, status_code=400)

        def write() -> dict[str, Any]:
            labeling.skip(project, image_id)
            return {"ok": True}

        return await _answer(write)

    async def undo(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, token)
        if isinstance(body, Response):
            return body
        if not undo_stack:
            return JSONResponse({"error": "nothing to undo"}, status_code=409)
        done = undo_stack[-1]

        def write() -> dict[str, Any]:
            try:
                labeling.undo(project, done)
            except labeling.Conflict:  # changed since by someone else: it cannot be undone later either
                undo_stack.remove(done)
                raise
            undo_stack.remove(done)  # only once undone: a busy database leaves it to undo again
            return {"ok": True, "image": done.image}

        return await _answer(write)

    async def review(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, token)
        if isinstance(body, Response):
            return body
        image_id, name, expected = _image_id(body), body.get("label"), body.get("expected")
        if image_id is None or not isinstance(name, str) or not isinstance(expected, str):
            return JSONResponse({"error": 'expected {"image": id, "label": class, "expected": class}'}, status_code=400)
        return await _answer(lambda: {"decision": relabel.review_answer(project, image_id, name, expected)})

    async def train(request: Request) -> Response:
        body = await read_json(request, MAX_BODY, token)
        if isinstance(body, Response):
            return body
        if not trainer.start():
            return JSONResponse({"error": "a round is already training"}, status_code=409)
        since_round[0] = 0
        return JSONResponse({"ok": True}, status_code=202)

    routes = [
        Route("/", page),
        Route("/api/state", state),
        Route("/image/{image_id:int}", image),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/skip", skip, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/review", review, methods=["POST"]),
        Route("/api/train", train, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    hosts = allowed_hosts or LOCAL_HOSTS
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(SecurityHeaders)]
    return Starlette(routes=routes, middleware=middleware)


async def _answer(work: Callable[[], dict[str, Any]]) -> Response:
    """Run ``work`` in the thread pool; its dict as JSON, or its error as a one-line JSON error."""
    try:
        return JSONResponse(await run_in_threadpool(work))
    except (UserError, sqlite3.DatabaseError) as error:
        return _error(error)


def _error(error: Exception) -> Response:
    if isinstance(error, sqlite3.DatabaseError):
        return JSONResponse({"error": one_line(f"project.db: {db.damage_hint(error)}")}, status_code=503)
    status = 409 if isinstance(error, labeling.Conflict) else 400
    return JSONResponse({"error": one_line(str(error))}, status_code=status)


def _image_id(body: dict[str, Any]) -> int | None:
    """The body's image id: a JSON integer in SQLite's range (not a bool, a float or a string)."""
    value = body.get("image")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    return None


async def read_json(request: Request, limit: int, token: str | None = None) -> dict[str, Any] | Response:
    """The request's JSON object of at most ``limit`` bytes, after checking its CSRF token when
    ``token`` is given (``X-CSRF-Token``); else the 4xx response that says why there is none."""
    if token is not None:
        given = request.headers.get("x-csrf-token", "").encode("utf-8", "surrogateescape")
        if not secrets.compare_digest(given, token.encode()):
            return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "expected application/json"}, status_code=415)
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > limit:
            return JSONResponse({"error": f"the body is over {limit} bytes"}, status_code=413)
    try:
        body = json.loads(bytes(raw) or b"{}")
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "expected a JSON object"}, status_code=400)
    return body
