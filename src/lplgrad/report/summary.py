"""A plain-text accuracy table (mean over trials per strategy and labeled-set size) for the terminal."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from lplgrad.report.metrics import mean_std


def accuracy_table(rows: list[dict[str, Any]]) -> str:
    """Rows = labeled-set sizes, columns = strategies, cells = mean test accuracy in % (+/- std if > 1 trial)."""
    if not rows:
        return "(no finished rounds)"
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for row in rows:
        cells[(row["labeled"], row["strategy"])].append(100.0 * row["test_accuracy"])
    strategies = list(dict.fromkeys(row["strategy"] for row in rows))
    sizes = sorted({size for size, _ in cells})
    width = max(12, *(len(s) + 2 for s in strategies))
    lines = ["labeled".rjust(8) + "".join(s.rjust(width) for s in strategies)]
    for size in sizes:
        line = str(size).rjust(8)
        for strategy in strategies:
            values = cells.get((size, strategy), [])
            if not values:
                text = "-"
            else:
                mean, std = mean_std(values)
                text = f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f}±{std:.1f}"
            line += text.rjust(width)
        lines.append(line)
    return "\n".join(lines)
