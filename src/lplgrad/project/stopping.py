"""Whether a labeling project may stop: the stopping criteria over its rounds, for ``status`` and the page.

The signals are stored with each round (``core.records.Measured``); this module only reads them
back and judges them with the project's ``[stop]`` settings (``quality.stopping``).
"""

from __future__ import annotations

from typing import Any

from lplgrad.config.schema import RunConfig
from lplgrad.quality.stopping import Rules, criteria, signals_of, summary


def stopping_state(rounds: list[dict[str, Any]], config: RunConfig) -> dict[str, Any]:
    """The summary line, each criterion (met, since which round, detail) and the latest calibration,
    over the project's trained rounds (a cold start trains nothing and is left out)."""
    trained = [r for r in rounds if r.get("model_file")]
    rules = Rules.of(config.stop)
    history = [signals_of(r) for r in trained]
    latest = trained[-1] if trained else {}
    return {
        "summary": summary(history, rules),
        "criteria": [
            {"name": c.name, "met": c.met, "since": c.since, "detail": c.detail} for c in criteria(history, rules)
        ]
        if history
        else [],
        "ece": latest.get("ece"),
        "temperature": latest.get("temperature"),
        "accuracy_low": latest.get("accuracy_low"),
        "accuracy_high": latest.get("accuracy_high"),
    }
