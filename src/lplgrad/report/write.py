"""``lplgrad report DIR [DIR ...]``: tables and figures in the form of the paper's evaluation.

Reads every DIR/results.jsonl (slices of one run, or a run still going) and writes
report.md with: the accuracy table (Table III: mean +/- std over trials, best in bold,
AUBC), paired differences to random with confidence intervals, the timing table
(Table IV), the with/without w_aux ablation (Tables V/VI), learning curves
(Figs. 3-5), per-class accuracy (Fig. 8), the classes of the queried images, where each
stopping rule would have stopped (report/stopping.py) and calibration with a reliability diagram.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lplgrad.config.files import read_toml
from lplgrad.config.schema import RunConfig, resolve
from lplgrad.core.schedule import labeled_schedule
from lplgrad.errors import UserError
from lplgrad.experiment import artifacts
from lplgrad.experiment.results import CONFIG_FILE, RESULTS_FILE, read_results
from lplgrad.quality.stopping import Rules
from lplgrad.report import plots, stopping
from lplgrad.report.metrics import aubc, mean_std, paired_difference
from lplgrad.runtime.atomic_io import write_atomic
from lplgrad.strategies import list_strategies, strategy_class

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"


@dataclass
class Run:
    rows: list[dict[str, Any]]
    config: RunConfig | None
    classes: list[str] | None


def load(dirs: Iterable[Path]) -> Run:
    """Merge the rows of several folders (slices of one run); the first folder's config and classes."""
    rows: list[dict[str, Any]] = []
    config, classes = None, None
    for folder in dirs:
        results = folder / RESULTS_FILE
        if not results.exists():
            raise UserError(f"{results} does not exist")
        found = read_results(results)
        if found.bad_lines:
            log.warning(
                "%s: lines %s are not results rows; reporting the other %d",
                results,
                ", ".join(map(str, found.bad_lines)),
                len(found.rows),
            )
        rows += found.rows
        if config is None and (folder / CONFIG_FILE).exists():
            config = resolve(read_toml(folder / CONFIG_FILE))
        if classes is None and (folder / DATASET_FILE).exists():
            classes = json.loads((folder / DATASET_FILE).read_text())["classes"]
    if not rows:
        raise UserError("no finished rounds to report yet")
    unique = {(r["strategy"], r["trial"], r["round"]): r for r in rows}  # a repeated row counts once
    return Run(sorted(unique.values(), key=lambda r: (r["trial"], r["round"])), config, classes)


def methods_in(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["strategy"] for r in rows))


def curves(rows: list[dict[str, Any]]) -> plots.Curves:
    out: plots.Curves = defaultdict(lambda: defaultdict(list))
    for row in rows:
        out[row["strategy"]][row["labeled"]].append(row["test_accuracy"])
    return out


def by_trial(rows: list[dict[str, Any]], method: str) -> dict[int, dict[int, float]]:
    """{trial: {labeled size: accuracy}} for one method."""
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for row in rows:
        if row["strategy"] == method:
            out[row["trial"]][row["labeled"]] = row["test_accuracy"]
    return out


def _pct(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f}" if len(values) == 1 else f"{100 * mean:.2f} ± {100 * std:.2f}"


def missing_lines(run: Run) -> list[str]:
    """What a complete run would have and this one lacks (a run still going, or stopped)."""
    if run.config is None:
        return ["no config.toml: cannot tell which rounds are missing"]
    active = run.config.active
    sizes = labeled_schedule(active.initial_size, active.query_size, active.rounds, active.budget)
    present = {(r["strategy"], r["trial"], r["round"]) for r in run.rows}
    lines = []
    strategies = list(dict.fromkeys([*active.strategies, *methods_in(run.rows)]))
    trials = sorted(
        {r["trial"] for r in run.rows} | set(range(active.trial_offset, active.trial_offset + active.trials))
    )
    for method in strategies:
        for trial in trials:
            absent = [r for r in range(len(sizes)) if (method, trial, r) not in present]
            if len(absent) == len(sizes):
                lines.append(f"{method} trial {trial}: not started")
            elif absent:
                lines.append(f"{method} trial {trial}: rounds {absent[0]}-{absent[-1]} of 0-{len(sizes) - 1} missing")
    return lines


def accuracy_section(run: Run) -> list[str]:
    """Table III: methods x labeled sizes, mean ± std (%) over trials, best mean per column in bold, AUBC."""
    acc = curves(run.rows)
    sizes = sorted({r["labeled"] for r in run.rows})
    methods = methods_in(run.rows)
    best = {s: max((np.mean(acc[m][s]) for m in methods if acc[m].get(s)), default=math.nan) for s in sizes}
    aubcs = {
        m: [aubc(list(t), list(t.values())) for t in by_trial(run.rows, m).values() if len(t) == len(sizes)]
        for m in methods
    }
    best_aubc = max((np.mean(v) for v in aubcs.values() if v), default=math.nan)
    lines = ["| method | " + " | ".join(str(s) for s in sizes) + " | AUBC |", "| --- |" + " --- |" * (len(sizes) + 1)]
    for method in methods:
        cells = []
        for size in sizes:
            values = acc[method].get(size, [])
            text = _pct(values)
            cells.append(f"**{text}**" if values and np.mean(values) == best[size] else text)
        text = _pct(aubcs[method])
        cells.append(f"**{text}**" if aubcs[method] and np.mean(aubcs[method]) == best_aubc else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def paired_table(run: Run, baseline: str = "random") -> list[str]:
    """Each method minus the baseline on the same trials (same initial sets): AUBC and final accuracy."""
    methods = [m for m in methods_in(run.rows) if m != baseline]
    base = by_trial(run.rows, baseline)
    sizes = sorted({r["labeled"] for r in run.rows})
    if not base or not methods:
        return [f"(needs {baseline} and another method)"]
    lines = [
        "| method | trials | Δ AUBC (points) | 95% CI | Δ final accuracy (points) | 95% CI |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in methods:
        own = by_trial(run.rows, method)
        trials = [t for t in own if t in base and len(own[t]) == len(base[t]) == len(sizes)]
        if not trials:
            lines.append(f"| {method} | 0 | - | - | - | - |")
            continue
        a = [aubc(list(own[t]), list(own[t].values())) for t in trials]
        b = [aubc(list(base[t]), list(base[t].values())) for t in trials]
        fa = [own[t][sizes[-1]] for t in trials]
        fb = [base[t][sizes[-1]] for t in trials]
        cells = []
        for x, y in ((a, b), (fa, fb)):
            mean, low, high = paired_difference(x, y)
            ci = "n/a (1 trial)" if math.isnan(low) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"
            cells += [f"{100 * mean:+.2f}", ci]
        lines.append(f"| {method} | {len(trials)} | " + " | ".join(cells) + " |")
    return lines


def timing_table(run: Run) -> list[str]:
    """Table IV: mean seconds per round for training and for querying (rounds that queried)."""
    devices = sorted({r.get("device", "?") for r in run.rows})
    lines = [
        f"Device: {', '.join(devices)}.",
        "",
        "| method | train s/round | query s/round | query ms/candidate |",
        "| --- | --- | --- | --- |",
    ]
    for method in methods_in(run.rows):
        own = [r for r in run.rows if r["strategy"] == method]
        queried = [r for r in own if r["candidates"]]
        train = np.mean([r["train_seconds"] for r in own])
        query = np.mean([r["query_seconds"] for r in queried]) if queried else math.nan
        per_candidate = (
            1e3 * np.sum([r["query_seconds"] for r in queried]) / max(1, sum(r["candidates"] for r in queried))
        )
        lines.append(f"| {method} | {train:.1f} | {query:.2f} | {per_candidate:.2f} |")
    return lines


def ablation_table(run: Run) -> list[str]:
    """Tables V/VI: each strategy next to its ablation (``Strategy.ablation_of``; lplgrad with w_aux
    and ent-gradnorm without it) at 1/3, 1/2 and all of the budget."""
    acc = curves(run.rows)
    pairs: list[tuple[str, str]] = []
    for name in acc:
        full = strategy_class(name).ablation_of if name in list_strategies() else None
        if full is not None and full in acc:
            pairs.append((full, name))
    if not pairs:
        return ["(needs a strategy and its ablation, e.g. lplgrad and ent-gradnorm)"]
    sizes = sorted({r["labeled"] for r in run.rows})
    picks = []
    for fraction in (1 / 3, 1 / 2, 1.0):
        target = sizes[-1] * fraction
        picks.append(min(sizes, key=lambda s: (abs(s - target), -s)))  # ties: the larger size
    picks = list(dict.fromkeys(picks))
    lines = ["| method | " + " | ".join(str(s) for s in picks) + " |", "| --- |" + " --- |" * len(picks)]
    for full, ablation in pairs:
        for method, label in ((full, full), (ablation, f"{ablation} (ablation of {full})")):
            lines.append(f"| {label} | " + " | ".join(_pct(acc[method].get(s, [])) for s in picks) + " |")
    return lines


def figures(run: Run, out_dir: Path, title: str) -> list[str]:
    """Write the PNGs; return their markdown lines."""
    acc = curves(run.rows)
    plots.learning_curves(acc, out_dir / "learning_curves.png", f"{title}: test accuracy vs labeled images")
    last = max(r["labeled"] for r in run.rows)
    final = {
        m: [r["per_class_accuracy"] for r in run.rows if r["strategy"] == m and r["labeled"] == last]
        for m in methods_in(run.rows)
    }
    num_classes = len(run.rows[0]["per_class_accuracy"])
    names = run.classes or [str(c) for c in range(num_classes)]
    per_class = {m: list(100 * np.nanmean(np.asarray(v, dtype=float), axis=0)) for m, v in final.items() if v}
    plots.grouped_bars(
        per_class,
        names,
        out_dir / "per_class_accuracy.png",
        f"{title}: per-class test accuracy at {last} labeled (mean over trials)",
        "accuracy (%)",
    )
    queried: dict[str, list[float]] = {}
    for method in methods_in(run.rows):
        labels = [lab for r in run.rows if r["strategy"] == method for lab in r.get("selected_labels") or []]
        if labels:
            counts = np.bincount(labels, minlength=num_classes)
            queried[method] = list(100 * counts / counts.sum())
    lines = ["![learning curves](learning_curves.png)", "", "![per-class accuracy](per_class_accuracy.png)"]
    if queried:
        plots.grouped_bars(
            queried,
            names,
            out_dir / "queried_classes.png",
            f"{title}: classes of all queried images",
            "share of queried images (%)",
        )
        lines += ["", "![queried classes](queried_classes.png)"]
    return lines


def reliability_figure(run: Run, out_dir: Path, title: str) -> list[str]:
    """The final round's reliability diagram per method, bins pooled over trials."""
    pooled = {m: stopping.pooled_reliability(run.rows, m) for m in methods_in(run.rows)}
    bins = {m: (r.confidence, r.accuracy, r.counts) for m, r in pooled.items() if r is not None}
    if not bins:
        return []
    last = max(r["labeled"] for r in run.rows)
    plots.reliability_diagram(
        bins,
        out_dir / "reliability.png",
        f"{title}: reliability at {last} labeled\n(test set, bins of >= {plots.MIN_BIN} images)",
    )
    return ["", "![reliability diagram](reliability.png)"]


def artifact_figures(dirs: list[Path], run: Run, out_dir: Path, title: str) -> list[str]:
    """t-SNE of test features (Fig. 6) and confidence histograms (Fig. 7) from --save-artifacts files."""
    from sklearn.manifold import TSNE

    found: dict[tuple[str, int, int], dict[str, Any]] = {}
    for folder in dirs:
        found.update(artifacts.load_all(folder))
    if not found:
        return []
    trial = min(t for _, t, _ in found)
    rounds = sorted({r for _, t, r in found if t == trial})
    shown = rounds[-2:] if len(rounds) > 1 else rounds  # the middle and the last round
    size_of = {r["round"]: r["labeled"] for r in run.rows}
    num_classes = len(run.rows[0]["per_class_accuracy"])
    names = run.classes or [str(c) for c in range(num_classes)]
    panels = {}
    for (method, t, round_index), item in sorted(found.items()):
        if t == trial and round_index in shown:
            features = item["test_features"].float().numpy()
            perplexity = min(30.0, max(2.0, (len(features) - 1) / 3))
            points = TSNE(2, init="pca", random_state=0, perplexity=perplexity).fit_transform(features)
            panels[(method, round_index)] = (points, item["test_labels"].numpy())
    plots.tsne_grid(panels, size_of, names, out_dir / "tsne.png", f"{title}: t-SNE of test-set features, trial {trial}")
    last = max(shown)
    confidence = {
        m: (item["confidence_labeled"].float().numpy(), item["confidence_unlabeled"].float().numpy())
        for (m, t, r), item in found.items()
        if t == trial and r == last
    }
    plots.confidence_histograms(
        confidence,
        out_dir / "confidence.png",
        f"{title}: confidence of labeled vs unlabeled images, {size_of.get(last, '?')} labeled",
    )
    return ["", "![t-SNE](tsne.png)", "", "![confidence](confidence.png)"]


def write_report(dirs: list[Path], out_dir: Path | None = None) -> Path:
    """Write report.md and its figures into ``out_dir`` (default: the first folder)."""
    run = load(dirs)
    out_dir = out_dir or dirs[0]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".report-{os.getpid()}.probe"  # fail on a read-only folder before drawing anything
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write the report into {out_dir}: {error.strerror or error}") from None
    title = run.config.data.name if run.config else "run"
    trials = sorted({r["trial"] for r in run.rows})
    sections = [
        f"# Report: {title}",
        "",
        f"Folders: {', '.join(str(d) for d in dirs)}. Trials present: {', '.join(map(str, trials))}. "
        f"Methods: {', '.join(methods_in(run.rows))}.",
        "",
        "## Completeness",
        "",
        *([f"- {line}" for line in missing_lines(run)] or ["All rounds present."]),
        "",
        "## Test accuracy (%) by labeled-set size (Table III form)",
        "",
        "Mean ± std over trials; best mean per column in bold. AUBC: area under the accuracy-vs-labeled curve "
        "divided by the labeled range (a mean accuracy, %), over trials with every round.",
        "",
        *accuracy_section(run),
        "",
        "## Paired differences to random",
        "",
        "Every method of a trial starts from the same initial labeled set and weights, so differences are paired "
        "by trial; percentage points, Student-t 95% confidence interval across trials.",
        "",
        *paired_table(run),
        "",
        "## Time per round (Table IV form)",
        "",
        *timing_table(run),
        "",
        "## Ablation: LPLgrad with and without the auxiliary model (Tables V/VI form)",
        "",
        *ablation_table(run),
        "",
        "## When to stop: each stopping rule on this known-labels run",
        "",
        *stopping.stopping_section(run.rows, methods_in(run.rows), Rules.of((run.config or RunConfig()).stop)),
        "",
        "## Calibration",
        "",
        *stopping.calibration_section(run.rows, methods_in(run.rows)),
        "",
        "## Figures",
        "",
        *figures(run, out_dir, title),
        *reliability_figure(run, out_dir, title),
        *artifact_figures(dirs, run, out_dir, title),
        "",
    ]
    path = out_dir / "report.md"
    write_atomic(path, "\n".join(sections))
    return path
