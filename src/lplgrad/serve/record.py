"""``lplgrad serve --record DIR``: every JSON body Label Studio sends, one file each, secrets taken out.

For seeing what a Label Studio version really sends (the protocol tests' fixtures were recorded so):
DIR/0001-setup.json, DIR/0002-predict.json, DIR/0003-webhook-ANNOTATION_CREATED.json, ...
API tokens and the project's token are replaced by placeholders before anything is written.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from pathlib import Path
from typing import Any

from lplgrad.runtime.atomic_io import write_atomic

SECRET_KEYS = {"access_token": "API-TOKEN", "token": "PROJECT-TOKEN", "password": None, "login": None}


def redact(value: Any) -> Any:
    """``value`` with every secret-named field replaced by its placeholder (at any depth)."""
    if isinstance(value, dict):
        return {
            k: (SECRET_KEYS[k] if k in SECRET_KEYS and value[k] is not None else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class Recorder:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def write(self, route: str, body: dict[str, Any]) -> Path:
        action = body.get("action") if route == "webhook" else None
        name = route if not isinstance(action, str) else f"{route}-{re.sub(r'[^A-Za-z0-9_]', '', action)[:40]}"
        with self._lock:
            path = self.folder / f"{next(self._numbers):04d}-{name}.json"
        write_atomic(path, json.dumps(redact(body), indent=2) + "\n")
        return path
