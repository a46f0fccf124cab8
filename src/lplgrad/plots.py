"""Figures of a report, with one color per method across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np

from lplgrad.strategies import list_strategies

# Accuracy per method: {method: {labeled size: [accuracy of each trial]}}
Curves = dict[str, dict[int, list[float]]]


def method_color(name: str) -> tuple[float, ...]:
    """The same color for a method in every figure and every report (registry order into tab10)."""
    names = list_strategies()
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    return tuple(plt.get_cmap("tab10")(index % 10))


def learning_curves(curves: Curves, path: Path, title: str) -> None:
    """Mean test accuracy vs labeled images with a +/- 1 std band per method (the paper's Figs. 3-5)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, by_size in curves.items():
        sizes = sorted(by_size)
        values = [np.asarray(by_size[s]) * 100 for s in sizes]
        mean = np.array([v.mean() for v in values])
        std = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in values])
        color = method_color(method)
        ax.plot(sizes, mean, marker="o", markersize=3, label=method, color=color)
        ax.fill_between(sizes, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouped_bars(
    values: dict[str, list[float]], labels: list[str], path: Path, title: str, ylabel: str, xlabel: str = "class"
) -> None:
    """One bar per (label, method), methods side by side (per-class accuracy, Fig. 8; query histograms)."""
    methods = list(values)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(labels) * max(1, len(methods)) / 2), 4.5))
    for i, method in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, values[method], width, label=method, color=method_color(method)
        )
    ax.set_xticks(x, labels, rotation=45 if max(map(len, labels)) > 3 else 0, ha="right" if labels else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
