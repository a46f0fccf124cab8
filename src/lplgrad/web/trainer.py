"""The page's "Train and pick the next batch": one query round at a time, in a background thread."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lplgrad.errors import UserError
from lplgrad.project.query import query

log = logging.getLogger(__name__)


@dataclass
class Trainer:
    """Runs ``query`` for a project in a worker thread and keeps a progress line for the page."""

    project: Path
    strategy: str | None
    k: int
    running: bool = False
    message: str = ""
    error: str | None = None
    rounds_started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, include_pending: bool = False) -> bool:
        """Start a round; False if one is already running. ``include_pending``: the new model ranks
        every unlabeled image again, those still waiting in a batch included (continuous learning)."""
        with self._lock:
            if self.running:
                return False
            self.running, self.error, self.message = True, None, "starting"
            self.rounds_started += 1
        threading.Thread(target=self._run, args=(include_pending,), name="lplgrad-round", daemon=True).start()
        return True

    def _run(self, include_pending: bool) -> None:
        try:
            result = query(
                self.project, self.strategy, self.k, include_pending=include_pending, on_progress=self._progress
            )
            self.message = f"round {result.round} ready: {result.queried} images"
        except UserError as error:
            self.error = str(error)
        except Exception as error:  # shown on the page; the details go to the server's log
            log.exception("the training round failed")
            self.error = f"the round failed: {type(error).__name__}: {error}"
        finally:
            self.running = False

    def _progress(self, message: str) -> None:
        self.message = message

    def state(self) -> dict[str, object]:
        return {"running": self.running, "message": self.message, "error": self.error}
