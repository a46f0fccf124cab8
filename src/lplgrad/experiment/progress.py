"""Progress of a long run: one log line per finished round, with an ETA."""

from __future__ import annotations

import logging
import time
from typing import Any

from lplgrad.core.records import RoundRecord

log = logging.getLogger(__name__)


class RoundLogger:
    """One line per finished round, with an ETA from the mean time per round so far."""

    def __init__(self, total_rounds: int) -> None:
        self.total, self.done, self.start = total_rounds, 0, time.perf_counter()

    def round_finished(self, record: RoundRecord, learner: Any) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s trial %d round %d: %d labeled, test accuracy %.2f%%, train %.1fs (%d steps), query %.1fs "
            "[%d/%d, ETA %s]",
            record.strategy,
            record.trial,
            record.round,
            record.labeled,
            100 * record.test_accuracy,
            record.train_seconds,
            record.steps,
            record.query_seconds,
            self.done,
            self.total,
            _duration(remaining),
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
