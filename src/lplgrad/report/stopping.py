"""The report's stopping and calibration sections: where each stopping rule would have stopped a
known-labels run, what accuracy that left on the table, and how calibrated the models were.

A benchmark with known labels is where a stopping rule can be judged: every trial ran to the end,
so for each rule we know the labeled-set size at which it first said "stop" and the accuracy the
rest of the budget still bought (final accuracy minus accuracy at the stop, in points).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lplgrad.quality.calibration import Reliability
from lplgrad.quality.stopping import STABLE, Rules, first_stop, rule_names, signals_of

WITHIN = 1.0  # points of final accuracy a rule may leave on the table and still count as "safe"


@dataclass(frozen=True)
class StopOutcome:
    """One rule over the trials of one method."""

    method: str
    rule: str
    stopped: int  # trials in which the rule said stop before or at the last round
    trials: int
    labels: float  # mean labeled-set size at the stop (the final size where it never stopped)
    accuracy: float  # mean accuracy at the stop, %
    final: float  # mean final accuracy, %
    left: float  # mean final - at stop, points
    worst_left: float  # the largest final - at stop of any trial
    budget: int  # the final labeled-set size


def _trials(rows: list[dict[str, Any]], method: str) -> list[list[dict[str, Any]]]:
    by_trial: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["strategy"] == method:
            by_trial[row["trial"]].append(row)
    return [sorted(trial, key=lambda r: r["round"]) for _, trial in sorted(by_trial.items())]


def stop_outcomes(rows: list[dict[str, Any]], methods: list[str], rules: Rules) -> list[StopOutcome]:
    """Every (method, rule) over the complete trials of ``rows`` (rows without stop fields: none)."""
    out = []
    budget = max((r["labeled"] for r in rows), default=0)
    for method in methods:
        trials = [  # complete trials only: a rule is judged against the accuracy at the end of the budget
            t for t in _trials(rows, method) if t and t[-1]["labeled"] == budget and all("stop_kappa" in r for r in t)
        ]
        if not trials:
            continue
        for label, judged, rule in judged_rules(rules):
            at, final, labels, stopped = [], [], [], 0
            for trial in trials:
                index = first_stop([signals_of(r) for r in trial], rule, judged)
                stopped += index is not None
                row = trial[index if index is not None else -1]
                at.append(100 * row["test_accuracy"])
                final.append(100 * trial[-1]["test_accuracy"])
                labels.append(row["labeled"])
            left = np.asarray(final) - np.asarray(at)
            out.append(
                StopOutcome(
                    method,
                    label,
                    stopped,
                    len(trials),
                    float(np.mean(labels)),
                    float(np.mean(at)),
                    float(np.mean(final)),
                    float(left.mean()),
                    float(left.max()),
                    budget,
                )
            )
    return out


def judged_rules(rules: Rules) -> list[tuple[str, Rules, str]]:
    """(label, rules, rule name) of each rule to judge: the configured ones, and stable predictions
    at two looser kappa thresholds too (Bloodgood's 0.99 was set for text classifiers; a report shows
    what a looser one would have saved)."""
    looser = [(f"{STABLE} (kappa >= {k})", replace(rules, kappa=k), STABLE) for k in (0.97, 0.95) if k < rules.kappa]
    judged = [(name, rules, name) for name in rule_names(rules)]
    return judged[:1] + looser + judged[1:]


def stopping_section(rows: list[dict[str, Any]], methods: list[str], rules: Rules) -> list[str]:
    outcomes = stop_outcomes(rows, methods, rules)
    if not outcomes:
        return ["No rows with stopping signals (written by an lplgrad before they existed)."]
    budget = max(r["labeled"] for r in rows)
    lines = [
        f"Rules: stable predictions = Cohen's kappa >= {rules.kappa} on the stop set for {rules.window} rounds; "
        f"low uncertainty = the stop set's mean normalised entropy <= {rules.uncertainty}; accuracy plateau = the "
        f"last {rules.window} rounds' accuracies inside the current 95% Wilson interval"
        + (f"; accuracy target = the interval's lower end >= {100 * rules.target:.1f}%" if rules.target else "")
        + f". Where a rule never stopped a trial, that trial counts at its final size ({budget}). Complete "
        "trials only.",
        "",
        "| method | rule | stopped | labels at stop | accuracy at stop | final accuracy | left on the table "
        "| worst trial |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.method} | {o.rule} | {o.stopped}/{o.trials} | {o.labels:.0f} | {o.accuracy:.2f} | {o.final:.2f} | "
            f"{o.left:+.2f} | {o.worst_left:+.2f} |"
        )
    lines += ["", *verdict_lines(outcomes)]
    return lines


def verdict_lines(outcomes: list[StopOutcome]) -> list[str]:
    """Per method: the rule that stops earliest while every trial stops within ``WITHIN`` points."""
    lines = []
    for method in dict.fromkeys(o.method for o in outcomes):
        safe = [o for o in outcomes if o.method == method and o.stopped == o.trials and o.worst_left <= WITHIN]
        if safe:
            best = min(safe, key=lambda o: o.labels)
            lines.append(
                f"- {method}: **{best.rule}** stops earliest within {WITHIN:.0f} point of the final accuracy in "
                f"every trial, at {best.labels:.0f} labels on average ({best.left:+.2f} points left)."
            )
        else:
            early = [o for o in outcomes if o.method == method and o.stopped == o.trials and o.labels < o.budget]
            closest = min(early, key=lambda o: o.worst_left, default=None)
            nearest = ""
            if closest:
                nearest = f" Closest: {closest.rule}, at {closest.labels:.0f} labels, "
                nearest += f"worst trial {closest.worst_left:+.2f} points."
            lines.append(
                f"- {method}: no rule stopped every trial within {WITHIN:.0f} point of the final accuracy.{nearest}"
            )
    return lines


def pooled_reliability(rows: list[dict[str, Any]], method: str) -> Reliability | None:
    """The final round's reliability bins of ``method``, summed over trials (confidence and accuracy
    weighted by the images in each bin)."""
    last = max((r["labeled"] for r in rows if r["strategy"] == method), default=None)
    bins = [
        Reliability.from_json(r["reliability"])
        for r in rows
        if r["strategy"] == method and r["labeled"] == last and r.get("reliability")
    ]
    if not bins:
        return None
    counts = np.sum([b.counts for b in bins], axis=0)

    def pooled(values: list[list[float | None]]) -> list[float | None]:
        weighted = np.sum(
            [[(v or 0.0) * n for v, n in zip(vs, b.counts, strict=True)] for vs, b in zip(values, bins, strict=True)],
            axis=0,
        )
        return [float(w / n) if n else None for w, n in zip(weighted, counts, strict=True)]

    return Reliability(
        [int(n) for n in counts], pooled([b.confidence for b in bins]), pooled([b.accuracy for b in bins])
    )


def calibration_section(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    with_ece = [m for m in methods if any(r.get("ece") is not None for r in rows if r["strategy"] == m)]
    if not with_ece:
        return ["No rows with calibration fields (written by an lplgrad before they existed)."]
    lines = [
        "Expected calibration error (10 equal-width bins of top-class confidence, %) of the models as trained, on the "
        "test set, and the temperature that scaling fits there (T > 1: the model was over-confident).",
        "",
        "| method | ECE first round | ECE last round | temperature last round |",
        "| --- | --- | --- | --- |",
    ]
    for method in with_ece:
        mine = [r for r in rows if r["strategy"] == method and r.get("ece") is not None]
        first, last = min(r["round"] for r in mine), max(r["round"] for r in mine)
        ece_first = np.mean([100 * r["ece"] for r in mine if r["round"] == first])
        ece_last = np.mean([100 * r["ece"] for r in mine if r["round"] == last])
        temperature = np.mean([r["temperature"] for r in mine if r["round"] == last])
        lines.append(f"| {method} | {ece_first:.2f} | {ece_last:.2f} | {temperature:.2f} |")
    return lines
