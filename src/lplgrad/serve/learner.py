"""When ``lplgrad serve`` trains: after every N new labels from Label Studio, and when Label Studio
asks (``START_TRAINING``, ``/train``). One round at a time, in the background, through the page's
``Trainer`` (``project.query.query``); a request that comes while a round runs is kept and served
when it ends, so no label is left out of training for long.

Every round ranks all unlabeled images again, those waiting in an earlier batch included: in Label
Studio every task is visible at once, so the batch is an order, not a hand-out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lplgrad.errors import UserError
from lplgrad.project.suggest import unlabeled_count
from lplgrad.web.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class LoggedTrainer(Trainer):
    """The page's Trainer, with its progress in the server's log and a call when a round ends."""

    on_done: Callable[[], None] | None = None

    def _progress(self, message: str) -> None:
        super()._progress(message)
        log.info("%s", message)

    def _run(self, include_pending: bool) -> None:
        super()._run(include_pending)
        if self.error:
            log.warning("the round failed: %s", self.error)
        else:
            log.info("%s", self.message)
        if self.on_done is not None:
            self.on_done()


@dataclass
class Learner:
    project: Path
    strategy: str | None
    k: int  # images per batch, capped by the unlabeled images left
    every: int  # new labels between rounds; 0: only when Label Studio asks
    on_round: Callable[[], None] | None = None  # after each round that finished well
    new_labels: int = 0
    wanted: bool = False  # asked for while a round ran
    trainer: LoggedTrainer = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.trainer = LoggedTrainer(self.project, self.strategy, self.k, on_done=self._after_round)

    def labeled(self, count: int) -> None:
        """``count`` new labels arrived; a round starts when N have come since the last one."""
        with self._lock:
            self.new_labels += count
            due = self._due()
        if due:
            self.train(f"{self.new_labels} new labels", only_if_due=True)

    def train(self, why: str, only_if_due: bool = False) -> bool:
        """Start a round now (False: one is running, and this one follows it; or nothing is left).
        ``only_if_due``: only if N new labels are still waiting, checked under the lock (two webhooks
        that both reached N start one round, not one and another after it)."""
        left = unlabeled_count(self.project)
        if left == 0:
            log.info("%s: every image is labeled, no round to train", why)
            return False
        with self._lock:
            if only_if_due and not self._due():
                return False
            self.trainer.k = min(self.k, left)
            if not self.trainer.start(include_pending=True):
                self.wanted = True
                log.info("%s: a round is training; another follows it", why)
                return False
            self.new_labels, self.wanted = 0, False
        log.info("%s: training a round in the background", why)
        return True

    def _due(self) -> bool:
        return self.every > 0 and self.new_labels >= self.every

    def _after_round(self) -> None:
        if self.trainer.error is None and self.on_round is not None:
            try:
                self.on_round()
            except Exception:  # the round is recorded; telling Label Studio is best effort
                log.exception("after the round")
        with self._lock:
            wanted = self.wanted
            again = wanted or self._due()
        if again:
            self.train("labels that came during the last round", only_if_due=not wanted)

    def state(self) -> dict[str, object]:
        return {**self.trainer.state(), "new_labels": self.new_labels, "train_every": self.every}


def in_background(what: str, work: Callable[[], Any]) -> None:
    """Run ``work`` in a daemon thread (a webhook must answer within Label Studio's 1 s); its error
    goes to the log as one line (a UserError) or with its traceback (anything else)."""

    def run() -> None:
        try:
            work()
        except UserError as error:
            log.warning("%s failed: %s", what, error)
        except Exception:
            log.exception("%s failed", what)

    threading.Thread(target=run, name=f"lplgrad-serve-{what}", daemon=True).start()
