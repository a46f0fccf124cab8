"""Whether a labeling project may stop: the stopping criteria over its rounds, for ``status`` and the page.

The signals are stored with each round (``core.records.Measured``); this module only reads them
back and judges them with the project's ``[stop]`` settings (``quality.stopping``).
"""

from __future__ import annotations

import json
from typing import Any

from lplgrad.config.schema import RunConfig
from lplgrad.quality.stopping import Rules, criteria, signals_of, summary


def spaced_rounds(
    rounds: list[dict[str, Any]], labeled_now: int | None = None, batch_now: int = 0
) -> list[dict[str, Any]]:
    """The trained rounds that stopping compares, thinned from the newest back: the one before a
    kept round is the latest at least that round's batch size of labels earlier. The page trains a
    round after every few answers, and two models 5 labels apart agree almost surely, which says
    nothing about being done; a round is compared with the model one batch before it. With
    ``labeled_now``: only the rounds at least ``batch_now`` labels before it."""
    kept: list[dict[str, Any]] = []
    bound = None if labeled_now is None else labeled_now - max(1, batch_now)
    for r in reversed([r for r in rounds if r.get("model_file")]):
        if bound is None or r["labeled"] <= bound:
            kept.append(r)
            bound = r["labeled"] - max(1, r["queried"])
    return kept[::-1]


def stopping_state(rounds: list[dict[str, Any]], config: RunConfig) -> dict[str, Any]:
    """The summary line, each criterion (met, since which round, detail) and the latest calibration,
    over the project's trained rounds a batch apart (``spaced_rounds``; a cold start trains nothing
    and is left out)."""
    trained = spaced_rounds(rounds)
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
        "reliability": json.loads(latest["reliability"]) if latest.get("reliability") else [],
        "temperature": latest.get("temperature"),
        "accuracy_low": latest.get("accuracy_low"),
        "accuracy_high": latest.get("accuracy_high"),
    }
