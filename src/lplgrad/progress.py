"""Progress of a long run: one log line per finished round, with an ETA."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


class RoundLogger:
    """One line per finished round, with an ETA from the mean time per round so far."""

    def __init__(self, total_rounds: int) -> None:
        self.total, self.done, self.start = total_rounds, 0, time.perf_counter()

    def __call__(self, row: dict[str, Any]) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        remaining = elapsed / self.done * (self.total - self.done)
        log.info(
            "%s trial %d round %d: %d labeled, test accuracy %.2f%%, train %.1fs, query %.1fs [%d/%d, ETA %s]",
            row["strategy"],
            row["trial"],
            row["round"],
            row["labeled"],
            100 * row["test_accuracy"],
            row["train_seconds"],
            row["query_seconds"],
            self.done,
            self.total,
            _duration(remaining),
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
