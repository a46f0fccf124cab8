"""HTTP Basic authentication for ``lplgrad serve``: what Label Studio sends an ML backend whose
connection has "Basic Authentication" on (its ``basic_auth_user`` / ``basic_auth_pass``, through
``requests``' HTTPBasicAuth on every call: health, setup, predict, START_TRAINING).

Label Studio's own annotation webhook (the one it makes for the backend's ``/webhook``) sends no
credentials by itself: give it the header with ``header_value`` (docs/label-studio.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from lplgrad.errors import UserError


def parse_credentials(text: str) -> tuple[str, str]:
    """``USER:PASSWORD`` (the password may hold colons); both parts non-empty."""
    user, colon, password = text.partition(":")
    if not colon or not user or not password:
        raise UserError("basic auth must be USER:PASSWORD, both non-empty")
    return user, password


def header_value(user: str, password: str) -> str:
    """The ``Authorization`` header value of these credentials."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class BasicAuth:
    """Refuses (401, a JSON error) every request without these credentials."""

    def __init__(self, app: ASGIApp, user: str, password: str) -> None:
        self.app = app
        self.expected = f"{user}:{password}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong basic auth credentials"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Basic realm="lplgrad"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, encoded = given.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return secrets.compare_digest(decoded, self.expected)
