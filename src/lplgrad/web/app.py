"""``lplgrad label``: a small local web app to label a project's batch while the model learns.

Starlette routes over the project functions (``project.labeling``, ``project.query``); the app
speaks no SQL. Security: images are served by registered id only; state-changing requests are
POSTs carrying the page's token in ``X-CSRF-Token``; every response has no-sniff, frame-deny
and a content security policy that allows only this origin.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from lplgrad.errors import UserError
from lplgrad.project import db, labeling, workflow
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


def create_app(
    project: Path, strategy: str | None = None, k: int = 20, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The app for one project; ``strategy`` and ``k`` size the rounds its button trains. Requests
    must name one of ``allowed_hosts`` (default: this machine's names) in their Host header, so a
    web page that rebinds its own domain to 127.0.0.1 (DNS rebinding) cannot reach the app."""
    db.connect(project).close()  # fails now, with the CLI's one-line error, if DIR is no project
    token = secrets.token_urlsafe(32)
    trainer = Trainer(project, strategy, k)
    undo_stack: list[tuple[int, dict[str, Any] | None]] = []
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "label.html", {"project": project.name, "token": token})

    async def state(request: Request) -> Response:
        return JSONResponse(
            {
                "batch": labeling.current_batch(project),
                "status": workflow.status(project),
                "dashboard": labeling.dashboard(project),
                "training": trainer.state(),
                "can_undo": bool(undo_stack),
            }
        )

    async def image(request: Request) -> Response:
        image_id = int(request.path_params["image_id"])
        path = labeling.image_file(project, image_id) if 0 < image_id < 2**63 else None
        if path is None or not path.is_file():
            return JSONResponse({"error": "no such image"}, status_code=404)
        return FileResponse(path, media_type=IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream"))

    async def label(request: Request) -> Response:
        body = await _json_body(request, token)
        if isinstance(body, Response):
            return body
        image_id, name = body.get("image"), body.get("label")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or not 0 < image_id < 2**63:
            return JSONResponse({"error": 'expected {"image": id, "label": class}'}, status_code=400)
        if not isinstance(name, str):
            return JSONResponse({"error": 'expected {"image": id, "label": class}'}, status_code=400)
        try:
            previous = labeling.answer(project, image_id, name)
        except UserError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        undo_stack.append((image_id, previous))
        return JSONResponse({"ok": True})

    async def undo(request: Request) -> Response:
        body = await _json_body(request, token)
        if isinstance(body, Response):
            return body
        if not undo_stack:
            return JSONResponse({"error": "nothing to undo"}, status_code=409)
        image_id, previous = undo_stack.pop()
        labeling.undo(project, image_id, previous)
        return JSONResponse({"ok": True, "image": image_id})

    async def train(request: Request) -> Response:
        body = await _json_body(request, token)
        if isinstance(body, Response):
            return body
        if not trainer.start():
            return JSONResponse({"error": "a round is already training"}, status_code=409)
        return JSONResponse({"ok": True}, status_code=202)

    routes = [
        Route("/", page),
        Route("/api/state", state),
        Route("/image/{image_id:int}", image),
        Route("/api/label", label, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/train", train, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    hosts = allowed_hosts or LOCAL_HOSTS
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts), Middleware(SecurityHeaders)]
    return Starlette(routes=routes, middleware=middleware)


async def _json_body(request: Request, token: str) -> dict[str, Any] | Response:
    """The request's JSON object, after checking its CSRF token; else the error response."""
    given = request.headers.get("x-csrf-token", "").encode("utf-8", "surrogateescape")
    if not secrets.compare_digest(given, token.encode()):
        return JSONResponse({"error": "missing or wrong X-CSRF-Token"}, status_code=403)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "expected application/json"}, status_code=415)
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        return JSONResponse({"error": "the body is not JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"error": "expected a JSON object"}, status_code=400)
    return body
